"""The production job runner: jobs queued in Redis (RQ), run by worker processes anywhere.

It keeps :class:`~retroface.jobs.local.LocalJobRunner`'s contract: ``submit`` returns a job id,
status, progress and results live in the database :class:`~retroface.jobs.store.JobStore` (so
the API and any client see them), and ``cancel`` goes through ``JobStore.cancel``, which the
handler observes the next time it reports progress. Redis only carries "run job N"; nothing about
a job's content is stored there.

A job whose worker died (killed, out of memory, machine lost) stays ``running`` in the database.
:meth:`RedisJobRunner.resume` queues it again; handlers that checkpoint (the video batch does,
under ``RETROFACE_HOME/jobs/<id>/``) carry on without redoing finished work.

Run workers with ``python -m retroface.jobs.redis_queue`` (or ``rq worker`` on the same queue);
they read the same ``RETROFACE_*`` settings as the application.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from retroface.core.errors import ConflictError
from retroface.core.status import JobStatus
from retroface.jobs.local import Handler
from retroface.jobs.store import JobCancelled, JobStore
from retroface.storage.tables import Job

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "retroface"
#: A job may run this long before RQ stops it (it is then ``failed`` and can be resumed).
DEFAULT_JOB_TIMEOUT_S = 24 * 3600

#: Runners working in this process, by queue name: ``execute`` uses their handlers.
_RUNNERS: dict[str, RedisJobRunner] = {}


def redis_url(settings: Any = None) -> str:
    """``RETROFACE_REDIS_URL`` (or the ``redis_url`` setting), else the local default."""
    return (
        getattr(settings, "redis_url", None) or os.environ.get("RETROFACE_REDIS_URL") or DEFAULT_URL
    )


class RedisJobRunner:
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
            execute,
            self.queue.name,
            job_id,
            job_id=f"{self.queue.name}-{job_id}-{uuid.uuid4().hex[:8]}",
            job_timeout=self.job_timeout_s,
            result_ttl=0,  # the result lives in the database
            failure_ttl=7 * 24 * 3600,
            description=f"retroface job {job_id}",
        )

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Same as the local runner: queued jobs never start, running ones stop at progress."""
        return self.store.cancel(job_id)

    def resume(
        self, job_id: int, force: bool = False, stale_after_s: float = 120.0
    ) -> dict[str, Any]:
        """Queue a job whose worker died; it carries on from its checkpoints.

        A ``running`` job is taken as dead only if it reported nothing for ``stale_after_s``
        (handlers report at least every few seconds), or with ``force`` when the caller knows
        the worker is gone; a ``failed`` job can always be resumed.
        """
        job = self.store.get(job_id)
        status = job["status"]
        if status == JobStatus.CANCELLING:
            self.store.update(job_id, status=JobStatus.CANCELLED)
            return self.store.get(job_id)
        if status == JobStatus.QUEUED:
            self._enqueue(job_id)  # harmless if already queued: only one worker can claim it
            return job
        if status not in ("running", "failed"):
            raise ConflictError(f"job {job_id} already {status}: nothing to resume")
        if status == JobStatus.RUNNING and not force:
            updated = job["updated_at"]
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
        while any(j["status"] in ("queued", "running", "cancelling") for j in self.store.list(200)):
            if time.monotonic() > deadline:
                raise TimeoutError("jobs still running")
            time.sleep(0.05)

    def stop(self) -> None:
        self.redis.close()

    # ------------------------------------------------------------------ worker side

    def run_one(self, job_id: int) -> bool:
        """Run one job if it is still queued; False if someone else took it or it was cancelled."""
        with self.store.db.session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, updated_at=self.store.clock())
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
        job = self.store.get(job_id)
        handler = self.handlers.get(job["kind"])
        if handler is None:
            self.store.update(
                job_id, status=JobStatus.FAILED, error=f"no handler for {job['kind']!r}"
            )
            return True
        payload = {**self.store.payload(job_id), "job_id": job_id}
        try:
            result = handler(payload, lambda d, t: self.store.progress(job_id, d, t))
            self.store.update(job_id, status=JobStatus.SUCCEEDED, result=result)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
        except Exception as exc:  # recorded, and resumable from its checkpoints
            log.exception("job %s failed", job_id)
            self.store.update(job_id, status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            return True
        self._clear_checkpoints(job_id)
        return True

    def _clear_checkpoints(self, job_id: int) -> None:
        if self.checkpoint_root is not None:
            shutil.rmtree(self.checkpoint_root / str(job_id), ignore_errors=True)

    def work(self, burst: bool = True, max_jobs: int | None = None) -> None:
        """Process the queue in this process (``burst``: until it is empty)."""
        from rq import SimpleWorker

        _RUNNERS[self.queue.name] = self
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


def register_default_handlers(runner: Any, ctx: Any) -> None:
    """Every job kind the application knows: batch enrolment and the video jobs."""
    from retroface.jobs.video import register_video_jobs

    runner.register("gallery.enrol", ctx._enrol_job)
    register_video_jobs(runner, ctx)


def runner_from_settings(queue: str = DEFAULT_QUEUE, url: str | None = None) -> RedisJobRunner:
    """A worker's runner, wired from the ``RETROFACE_*`` environment like the application."""
    from retroface.context import AppContext

    ctx = AppContext()
    runner = RedisJobRunner(
        ctx.job_store,
        url or redis_url(ctx.settings),
        queue,
        checkpoint_root=ctx.home / "jobs",
    )
    register_default_handlers(runner, ctx)
    return runner


def execute(queue: str, job_id: int) -> None:
    """What RQ runs: the job, with the handlers of this process's runner for ``queue``."""
    runner = _RUNNERS.get(queue)
    if runner is None:
        runner = _RUNNERS[queue] = runner_from_settings(queue)
    runner.run_one(job_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run retroface background jobs from Redis.")
    parser.add_argument("--url", default=None, help="Redis URL (default RETROFACE_REDIS_URL)")
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--resume-after",
        type=float,
        default=None,
        help="first resume jobs left running and silent for this many seconds",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = runner_from_settings(args.queue, args.url)
    if args.resume_after is not None:
        resumed = runner.resume_abandoned(args.resume_after)
        if resumed:
            log.info("resumed jobs %s", resumed)
    runner.work(burst=args.burst)


if __name__ == "__main__":
    # run the imported module's main, so that RQ's ``execute`` finds this process's runner
    from retroface.jobs.redis_queue import main as imported_main

    imported_main()
