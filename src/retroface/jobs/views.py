"""What the job store returns: a job's status and progress, typed once for the API and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from retroface.core.status import JobStatus


class JobView(BaseModel):
    """A background job as its submitter follows it; ``result`` is the handler's JSON result."""

    id: int
    kind: str
    status: JobStatus
    progress: int
    total: int
    result: dict[str, Any] | None
    error: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


#: Statuses a job never leaves.
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Statuses of a job that still holds the runner.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})
