"""The statuses that cases, searches, subjects and jobs move through.

``StrEnum`` members compare equal to their strings, so the database columns stay plain text and
JSON output is unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    EXPIRED = "expired"


class ReviewStatus(StrEnum):
    PENDING = "pending"
    NO_CANDIDATES = "no_candidates"
    IN_REVIEW = "in_review"
    AGREED = "agreed"
    DISPUTED = "disputed"
    RESOLVED = "resolved"

    @property
    def settled(self) -> bool:
        return self in (ReviewStatus.AGREED, ReviewStatus.RESOLVED)


class SubjectStatus(StrEnum):
    ACTIVE = "active"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
