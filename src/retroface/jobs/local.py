"""The embedded job runner: one worker thread per process, no server to install."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from retroface.core.status import JobStatus
from retroface.jobs.base import Handler
from retroface.jobs.store import JobCancelled, JobStore, new_runner_id, runner_stopped
from retroface.jobs.views import ACTIVE, JobView

log = logging.getLogger(__name__)


class LocalJobRunner:
    """A :class:`~retroface.jobs.base.JobRunner` on one daemon thread of this process."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.runner_id = new_runner_id("local")
        # a crashed predecessor's jobs would otherwise stay "running" (or queued) for ever
        interrupted = store.fail_interrupted("local")
        if interrupted:
            log.warning("jobs %s were interrupted by a stopped runner: marked failed", interrupted)
        self.handlers: dict[str, Handler] = {}
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def submit(self, kind: str, payload: dict[str, Any], created_by: str) -> int:
        if kind not in self.handlers:
            raise ValueError(f"no handler for job kind {kind!r}")
        job_id = self.store.create(kind, payload, created_by, runner=self.runner_id)
        self._ensure_worker()
        self._queue.put(job_id)
        return job_id

    def cancel(self, job_id: int) -> JobView:
        """The handler notices at its next progress report (``JobStore.progress`` raises)."""
        return self.store.cancel(job_id)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="retroface-jobs", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            self.run_one(job_id)

    def run_one(self, job_id: int) -> None:
        job = self.store.get(job_id)
        if job.status != JobStatus.QUEUED:
            return
        self.store.update(job_id, status=JobStatus.RUNNING)
        try:
            result = self.handlers[job.kind](
                self.store.payload(job_id), lambda d, t: self.store.progress(job_id, d, t)
            )
            self.store.finish(job_id, JobStatus.SUCCEEDED, result=result)
        except JobCancelled:
            log.info("job %s cancelled", job_id)
        except Exception as exc:  # a job's failure is recorded, never lost
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until queued jobs are done (tests and shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while not self._queue.empty() or any(j.status in ACTIVE for j in self.store.list(200)):
            if time.monotonic() > deadline:
                raise TimeoutError("jobs still running")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._thread and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
        runner_stopped(self.runner_id)
