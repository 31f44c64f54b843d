"""Jobs live in the database so progress survives the process and any client can follow it.

Each job names the runner holding it (``kind:host:pid:token``; the token tells apart two runners
of one process). A job whose runner is gone (its process no longer exists on this host, or a
runner of this process has stopped, or, on another host, nothing was heard for
:data:`STALE_AFTER_S`) is *interrupted*: cancelling it cancels it at once instead of asking a
runner that will never answer, and the next local runner to start marks it failed (issue #11,
finding 11). RQ workers resume their own (``RedisJobRunner.resume_abandoned``).
"""

from __future__ import annotations

import builtins
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from retroface.core.clock import utcnow
from retroface.core.errors import ConflictError, NotFoundError
from retroface.core.status import JobStatus
from retroface.core.text import check_id, check_page
from retroface.jobs.views import TERMINAL, JobView
from retroface.storage.db import Database
from retroface.storage.tables import Job

#: A job on another host silent this long is taken as interrupted (handlers report progress at
#: least every few seconds; RQ workers resume theirs after 600 s too).
STALE_AFTER_S = 600.0
INTERRUPTED = "interrupted: its runner stopped (crash, kill or restart) while it was {what}"

_live_lock = threading.Lock()
_LIVE: set[str] = set()  # runners of this process that have not stopped


def new_runner_id(kind: str) -> str:
    """A runner identity (``kind:host:pid:token``), registered as alive in this process."""
    runner = f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    with _live_lock:
        _LIVE.add(runner)
    return runner


def runner_stopped(runner: str) -> None:
    with _live_lock:
        _LIVE.discard(runner)


def runner_alive(runner: str | None) -> bool | None:
    """True or False where it can be known from here, None where it cannot (another host, an
    unknown format, a job from before runners were recorded)."""
    if not runner:
        return None
    parts = runner.split(":")
    if len(parts) != 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return None
    pid = int(parts[2])
    if pid == os.getpid():
        with _live_lock:
            return runner in _LIVE
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, under another user
    return True  # exists (or the pid was reused: then staleness decides nothing; cancel waits)


class JobCancelled(Exception):
    """Raised inside a job's work when someone asked to cancel it."""


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        kind=job.kind,
        status=JobStatus(job.status),
        progress=job.progress,
        total=job.total,
        result=job.result or None,
        error=job.error,
        created_by=job.created_by,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


class JobStore:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def create(
        self, kind: str, payload: dict[str, Any], created_by: str, runner: str | None = None
    ) -> int:
        """``runner``: the runner that will run it, where that is known at submission (a local
        runner's in-memory queue); RQ jobs get theirs when a worker claims them."""
        with self.db.session() as s:
            job = Job(
                kind=kind,
                payload=payload,
                created_by=created_by,
                status=JobStatus.QUEUED,
                runner=runner,
            )
            s.add(job)
            s.flush()
            return job.id

    def get(self, job_id: int) -> JobView:
        check_id(job_id, "job id")
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            return job_view(job)

    def list(self, limit: int = 50, offset: int = 0) -> list[JobView]:
        check_page(offset, limit)
        with self.db.session() as s:
            q = select(Job).order_by(Job.id.desc()).offset(offset).limit(limit)
            return [job_view(j) for j in s.scalars(q)]

    def payload(self, job_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            return dict(job.payload)

    def update(self, job_id: int, **fields: Any) -> None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = self.clock()

    def progress(self, job_id: int, done: int, total: int) -> None:
        """Record progress; raises JobCancelled if a cancel was requested meanwhile."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            if job.status == JobStatus.CANCELLING:
                job.status = JobStatus.CANCELLED
                job.updated_at = self.clock()
                s.commit()
                raise JobCancelled(f"job {job_id} cancelled")
            if job.status in TERMINAL:  # cancelled or failed as interrupted: stop here too
                raise JobCancelled(f"job {job_id} is {job.status}")
            job.progress, job.total, job.updated_at = done, total, self.clock()

    def finish(self, job_id: int, status: JobStatus, **fields: Any) -> bool:
        """Record a job's end, unless it already ended (cancelled as interrupted meanwhile)."""
        with self.db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            if job.status in TERMINAL:
                return False
            job.status = status
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = self.clock()
            return True

    def cancel(self, job_id: int) -> JobView:
        check_id(job_id, "job id")
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            if job.status in TERMINAL:
                raise ConflictError(f"job {job_id} already {job.status}")
            if job.status == JobStatus.QUEUED:
                job.status = JobStatus.CANCELLED
            elif self._interrupted(job):  # nobody would ever see a request to stop
                job.error = INTERRUPTED.format(what="running") + "; cancelled"
                job.status = JobStatus.CANCELLED
            else:
                job.status = JobStatus.CANCELLING
            job.updated_at = self.clock()
            s.flush()
            return job_view(job)

    def _interrupted(self, job: Job) -> bool:
        """Its runner is gone: known dead here, or unknown and silent for STALE_AFTER_S."""
        alive = runner_alive(job.runner)
        if alive is not None:
            return not alive
        updated = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=UTC)
        return self.clock() - updated > timedelta(seconds=STALE_AFTER_S)

    def fail_interrupted(self, kind: str = "local") -> builtins.list[int]:
        """Mark the unfinished jobs of dead ``kind`` runners: failed (``cancelled`` if a cancel
        was asked), with the reason. Run when a local runner starts."""
        ended: builtins.list[int] = []
        with self.db.session() as s:
            active = s.scalars(
                select(Job).where(
                    Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING])
                )
            ).all()
            for job in active:
                owned = job.runner is not None and job.runner.startswith(f"{kind}:")
                legacy = job.runner is None and job.status != JobStatus.QUEUED
                if not (owned or legacy) or not self._interrupted(job):
                    continue
                was = "queued" if job.status == JobStatus.QUEUED else "running"
                job.error = INTERRUPTED.format(what=was)
                job.status = (
                    JobStatus.CANCELLED if job.status == JobStatus.CANCELLING else JobStatus.FAILED
                )
                job.updated_at = self.clock()
                ended.append(job.id)
        return ended

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func

        with self.db.session() as s:
            return dict(
                s.execute(select(Job.status, func.count(Job.id)).group_by(Job.status)).all()
            )
