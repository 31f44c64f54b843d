"""What every job runner offers, so callers never care whether jobs run in a thread or on Redis.

:class:`~retroface.jobs.local.LocalJobRunner` (a thread in this process) and
:class:`~retroface.jobs.redis_queue.RedisJobRunner` (RQ workers anywhere) both satisfy
:class:`JobRunner`; the application context types its runner as this protocol, and
:mod:`retroface.jobs.handlers` registers the job kinds on whichever it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from retroface.jobs.store import JobStore
from retroface.jobs.views import JobView

#: Reports (done, total); raises :class:`~retroface.jobs.store.JobCancelled` once cancelled.
Progress = Callable[[int, int], None]

#: A job handler gets its payload and a progress callback and returns a JSON-able result.
Handler = Callable[[dict[str, Any], Progress], dict[str, Any]]


class JobRunner(Protocol):
    """Queue jobs by kind; status, progress and results live in :attr:`store` (the database)."""

    store: JobStore

    def register(self, kind: str, handler: Handler) -> None:
        """Bind a job kind to its handler (once, at wiring time)."""

    def submit(self, kind: str, payload: dict[str, Any], created_by: str) -> int:
        """Queue a job; returns its id. Raises ``ValueError`` for an unknown kind."""
        ...

    def cancel(self, job_id: int) -> JobView:
        """Queued jobs never start; a running one stops the next time it reports progress."""
        ...

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no job is queued or running (tests and shutdown)."""

    def stop(self) -> None:
        """Release threads and connections."""
