"""Jobs live in the database so progress survives the process and any client can follow it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from retroface.core.clock import utcnow
from retroface.core.errors import ConflictError, NotFoundError
from retroface.core.status import JobStatus
from retroface.core.text import check_id, check_page
from retroface.jobs.views import TERMINAL, JobView
from retroface.storage.db import Database
from retroface.storage.tables import Job


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

    def create(self, kind: str, payload: dict[str, Any], created_by: str) -> int:
        with self.db.session() as s:
            job = Job(kind=kind, payload=payload, created_by=created_by, status=JobStatus.QUEUED)
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
            job.progress, job.total, job.updated_at = done, total, self.clock()

    def cancel(self, job_id: int) -> JobView:
        check_id(job_id, "job id")
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            if job.status in TERMINAL:
                raise ConflictError(f"job {job_id} already {job.status}")
            job.status = (
                JobStatus.CANCELLED if job.status == JobStatus.QUEUED else JobStatus.CANCELLING
            )
            job.updated_at = self.clock()
            s.flush()
            return job_view(job)

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func

        with self.db.session() as s:
            return dict(
                s.execute(select(Job.status, func.count(Job.id)).group_by(Job.status)).all()
            )
