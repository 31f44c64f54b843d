"""The production job runner: jobs queued in Redis (RQ), run by worker processes anywhere.

It keeps :class:`~retroface.jobs.local.LocalJobRunner`'s contract: ``submit`` returns a job id,
status, progress and results live in the database :class:`~retroface.jobs.store.JobStore` (so
the API and any client see them), and ``cancel`` goes through ``JobStore.cancel``, which the
handler observes the next time it reports progress. Redis only carries "run job N"; nothing about
a job's content is stored there.

A job whose worker died (killed, out of memory, machine lost) stays ``running`` in the database.
:meth:`RedisJobRunner.resume` queues it again; handlers that checkpoint (the video batch does,
under ``RETROFACE_HOME/jobs/<id>/``) carry on without redoing finished work.

Run workers with ``python -m retroface.jobs.redis_queue`` (or ``python -m retroface.jobs.worker``,
or ``rq worker`` on the same queue); they read the same ``RETROFACE_*`` settings as the
application. The worker entry point lives in :mod:`retroface.jobs.worker`, a composition root
like the CLI: this module never builds the application context, and what RQ runs is named by
string (:data:`EXECUTE`), so the runner does not import the module that wires it.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from retroface.core.errors import ConflictError
from retroface.core.status import JobStatus
from retroface.jobs.base import Handler
from retroface.jobs.store import JobCancelled, JobStore, new_runner_id, runner_stopped
from retroface.jobs.views import ACTIVE, JobView
from retroface.storage.tables import Job

if TYPE_CHECKING:
    from retroface.config import Settings

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "retroface"
#: A job may run this long before RQ stops it (it is then ``failed`` and can be resumed).
DEFAULT_JOB_TIMEOUT_S = 24 * 3600

#: What RQ runs for each job (``retroface.jobs.worker.execute``): it finds this process's runner
#: for the queue in :data:`RUNNERS`, or wires one from the settings when ``rq worker`` started it.
EXECUTE = "retroface.jobs.worker.execute"

#: Runners working in this process, by queue name: :data:`EXECUTE` uses their handlers.
RUNNERS: dict[str, RedisJobRunner] = {}


def redis_url(settings: Settings) -> str:
    """The ``redis_url`` setting (``RETROFACE_REDIS_URL``), else the local default."""
    return settings.redis_url or DEFAULT_URL


class RedisJobRunner:
    """A :class:`~retroface.jobs.base.JobRunner` whose jobs RQ workers run, here or elsewhere."""

    def __init__(
        self,
        store: JobStore,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        checkpoint_root: Path | None = None,
        job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S,
    ) -> None:
        from redis import Redis
        from rq import Queue

        self.store = store
        self.url = url
        self.redis = Redis.from_url(url)
        self.queue = Queue(queue, connection=self.redis, default_timeout=job_timeout_s)
        self.checkpoint_root = checkpoint_root
        self.job_timeout_s = job_timeout_s
        self.handlers: dict[str, Handler] = {}
        #: recorded on each job this process claims, so a cancel can see the worker is gone
        self.runner_id = new_runner_id("rq")

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    # ------------------------------------------------------------------ client side

    def submit(self, kind: str, payload: dict[str, Any], created_by: str) -> int:
        if kind not in self.handlers:
            raise ValueError(f"no handler for job kind {kind!r}")
        job_id = self.store.create(kind, payload, created_by)
        self._enqueue(job_id)
        return job_id

    def _enqueue(self, job_id: int) -> None:
        self.queue.enqueue(
            EXECUTE,
            self.queue.name,
            job_id,
            job_id=f"{self.queue.name}-{job_id}-{uuid.uuid4().hex[:8]}",
            job_timeout=self.job_timeout_s,
            result_ttl=0,  # the result lives in the database
            failure_ttl=7 * 24 * 3600,
            description=f"retroface job {job_id}",
        )

    def cancel(self, job_id: int) -> JobView:
        """Same as the local runner: queued jobs never start, running ones stop at progress."""
        return self.store.cancel(job_id)

    def resume(self, job_id: int, force: bool = False, stale_after_s: float = 120.0) -> JobView:
        """Queue a job whose worker died; it carries on from its checkpoints.

        A ``running`` job is taken as dead only if it reported nothing for ``stale_after_s``
        (handlers report at least every few seconds), or with ``force`` when the caller knows
        the worker is gone; a ``failed`` job can always be resumed.
        """
        job = self.store.get(job_id)
        status = job.status
        if status == JobStatus.CANCELLING:
            self.store.update(job_id, status=JobStatus.CANCELLED)
            return self.store.get(job_id)
        if status == JobStatus.QUEUED:
            self._enqueue(job_id)  # harmless if already queued: only one worker can claim it
            return job
        if status not in (JobStatus.RUNNING, JobStatus.FAILED):
            raise ConflictError(f"job {job_id} already {status}: nothing to resume")
        if status == JobStatus.RUNNING and not force:
            updated = job.updated_at
            age = (self.store.clock() - _aware(updated)).total_seconds()
            if age < stale_after_s:
                raise ConflictError(
                    f"job {job_id} reported progress {age:.0f}s ago: its worker may be alive "
                    "(resume with force if you know it is not)"
                )
        with self.store.db.session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == status)
                .values(status=JobStatus.QUEUED, error=None, updated_at=self.store.clock())
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise ConflictError(f"job {job_id} changed meanwhile; look at it again")
        self._enqueue(job_id)
        return self.store.get(job_id)

    def resume_abandoned(self, stale_after_s: float = 600.0) -> list[int]:
        """Resume every ``running`` job silent for ``stale_after_s`` (run at worker start-up)."""
        cutoff = self.store.clock() - timedelta(seconds=stale_after_s)
        with self.store.db.session() as s:
            ids = list(
                s.scalars(
                    select(Job.id).where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff)
                )
            )
        resumed = []
        for job_id in ids:
            try:
                self.resume(job_id, force=True)
                resumed.append(job_id)
            except ConflictError:
                continue
        return resumed

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no job is queued or running (needs a worker somewhere)."""
        deadline = time.monotonic() + timeout
        while any(j.status in ACTIVE for j in self.store.list(200)):
            if time.monotonic() > deadline:
                raise TimeoutError("jobs still running")
            time.sleep(0.05)

    def stop(self) -> None:
        runner_stopped(self.runner_id)
        self.redis.close()

    # ------------------------------------------------------------------ worker side

    def run_one(self, job_id: int) -> bool:
        """Run one job if it is still queued; False if someone else took it or it was cancelled."""
        with self.store.db.session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING, runner=self.runner_id, updated_at=self.store.clock()
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
        job = self.store.get(job_id)
        handler = self.handlers.get(job.kind)
        if handler is None:
            self.store.update(job_id, status=JobStatus.FAILED, error=f"no handler for {job.kind!r}")
            return True
        payload = {**self.store.payload(job_id), "job_id": job_id}
        try:
            result = handler(payload, lambda d, t: self.store.progress(job_id, d, t))
            self.store.finish(job_id, JobStatus.SUCCEEDED, result=result)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
        except Exception as exc:  # recorded, and resumable from its checkpoints
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            return True
        self._clear_checkpoints(job_id)
        return True

    def _clear_checkpoints(self, job_id: int) -> None:
        if self.checkpoint_root is not None:
            shutil.rmtree(self.checkpoint_root / str(job_id), ignore_errors=True)

    def work(self, burst: bool = True, max_jobs: int | None = None) -> None:
        """Process the queue in this process (``burst``: until it is empty)."""
        from rq import SimpleWorker

        RUNNERS[self.queue.name] = self
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            worker = SimpleWorker([self.queue], connection=self.redis)
            worker.work(burst=burst, max_jobs=max_jobs, logging_level="WARNING")
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _aware(value: Any) -> Any:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


if __name__ == "__main__":
    # kept as the documented worker command; the worker wires the application, so it lives in a
    # composition root of its own (imported only when this file is run as a program)
    from retroface.jobs.worker import main

    main()
