"""What the case and review services return.

Pydantic models shared by the services (their return types), the API (its ``response_model``s)
and the CLI (``--json`` prints ``model_dump(mode="json")``): field names, order and nesting here
are what users see. Times are UTC and serialise as ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from retroface.core.status import CaseStatus, ReviewStatus

#: Which review of a candidate list a decision was: two blind ones, then a tiebreak if they differ.
ReviewStage = Literal["first", "second", "tiebreak"]


class View(BaseModel):
    """A result handed out by a service: read-only once built."""

    model_config = ConfigDict(frozen=True)


class CaseView(View):
    """A case and the state of its authorisation, read from its ``cases`` row."""

    model_config = ConfigDict(from_attributes=True)

    reference: str
    offence_category: str
    purpose: str
    justification: str
    status: CaseStatus
    urgent: bool
    urgent_deadline: datetime | None
    opened_at: datetime
    decided_at: datetime | None
    decision_note: str | None
    authorised_until: datetime | None
    purged_at: datetime | None


class TeamMemberView(View):
    """Someone with need-to-know on a case: its owner, a member, or a supervisor."""

    username: str
    role: Literal["owner", "member", "supervisor"]
    added_by: str | None
    added_at: datetime


class QueueItem(View):
    """A search awaiting the reviewer who asked: not their own, not yet decided by them."""

    search_id: int
    case: str | None
    status: ReviewStatus
    needs: Literal["review", "tiebreak"]
    candidates: int
    started_at: datetime


class ReviewCandidate(View):
    rank: int
    subject: str
    similarity: float


class ReviewEntry(View):
    """One review decision, shown to its author, to auditors, and to all once settled."""

    reviewer_id: int
    stage: ReviewStage
    decision: str
    candidate_rank: int | None
    note: str | None


class ReviewSheet(View):
    """A candidate list to adjudicate; ``hidden`` counts decisions not yet shown."""

    search_id: int
    label: str
    status: ReviewStatus
    outcome: str | None
    candidates: list[ReviewCandidate]
    reviews_in: int
    reviews: list[ReviewEntry]
    hidden: int
    probe_quality: dict[str, Any] | None  # last, where the API has always put it
    #: When the searched probe is an enhanced version: every step from the original, in order
    #: (a reviewer judges the candidates knowing what was done to the probe; who did it and the
    #: hashes are in the disclosure export). None for an original.
    probe_enhancement: list[dict[str, Any]] | None = None


class ReviewOutcome(View):
    """What one decision did: its stage, the list's review status and any settled outcome."""

    search_id: int
    stage: ReviewStage
    status: ReviewStatus
    outcome: str | None
