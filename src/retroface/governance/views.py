"""What the case and review services return.

Pydantic models shared by the services (their return types), the API (its ``response_model``s)
and the CLI (``--json`` prints ``model_dump(mode="json")``): field names, order and nesting here
are what users see. Times are UTC and serialise as ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

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
    #: Searches list the top-k whatever their score (the authoriser allowed it; see cases.py).
    investigation_mode: bool = False


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
    above_threshold: bool | None = None  # at or above the operating threshold (None: none)
    #: the quality minimums the matched reference image breaks (enrolled flagged)
    reference_warnings: list[str] = Field(default_factory=list)


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
    probe_quality: dict[str, Any] | None  # after the reviews, where the API has always put it
    #: Where the threshold lies: the operating threshold the list is read against, its source,
    #: and the search's mode (investigation: candidates below it are listed, marked so).
    operating_threshold: float | None = None
    operating_source: str | None = None
    mode: str = "operating"
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


# ----------------------------------------------------------------------------- oversight figures
#
# What an oversight account (an ethics panel, a regulator) reads: counts per calendar month (UTC)
# and nothing that names anyone: no username, no case reference, no subject, no face. Small
# counts are shown as they are (a count is not personal data); every key of every dict below is
# from a fixed vocabulary (offence categories from the policy list, review decisions, quality
# reasons as the code words them). Rates are derived from the counts beside them, so a total row
# gets its own rates rather than an average of monthly ones.


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class SearchFigures(View):
    """Searches run in the month, from the audit log (complete: it is never trimmed)."""

    run: int
    by_offence: dict[str, int]
    no_candidates: int  # searches that returned no candidate at all (nothing to review)
    footage_scans: int  # footage searched for a person (``video.find``)
    attempts_refused: int  # probe uploads and searches refused (no authorisation, role, team)
    disclosures: int  # disclosure packages exported


class AuthorisationFigures(View):
    """Requests by when a case was opened; decisions by when they were made."""

    requested: int
    granted: int
    refused: int
    awaiting: int  # of the month's requests, still undecided now (urgent ones in their window)
    median_hours_to_decision: float | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def refusal_rate(self) -> float | None:
        return _rate(self.refused, self.granted + self.refused)


class UrgentFigures(View):
    """The urgent route: searching before an authoriser has decided, for a limited window."""

    opened: int
    granted: int  # decided in the month
    refused: int  # decided in the month; everything the use produced was deleted at once
    lapsed: int  # window ended in the month without a decision (the case is then purged)
    purged: int  # urgent cases whose material was deleted in the month (refused or lapsed)
    searches_before_authorisation: int  # searches run under an urgent case before its decision


class ReviewFigures(View):
    """Blind two-person review, by when each decision was made.

    ``pairs`` counts candidate lists whose second blind decision came in the month: they
    ``agreed`` (same decision and, for a possible match, the same candidate) or were ``disputed``
    and went to a third reviewer (``tiebreaks``, when that decision came). ``outcomes`` counts
    the lists settled in the month by their outcome. ``agreement_matrix`` counts first (rows)
    against second (columns) decisions in the order of ``decisions_order``.
    """

    decisions: int
    pairs: int
    agreed: int
    disputed: int
    tiebreaks: int
    outcomes: dict[str, int]
    decisions_order: list[str]
    agreement_matrix: list[list[int]]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def agreement_rate(self) -> float | None:
        """The share of pairs that agreed (the workflow's rule: same candidate too)."""
        return _rate(self.agreed, self.pairs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kappa(self) -> float | None:
        """Cohen's kappa over the decision categories (None below 2 pairs or when undefined)."""
        n = sum(map(sum, self.agreement_matrix))
        if n < 2:
            return None
        p_o = sum(self.agreement_matrix[i][i] for i in range(len(self.agreement_matrix))) / n
        rows = [sum(r) / n for r in self.agreement_matrix]
        cols = [sum(c) / n for c in zip(*self.agreement_matrix, strict=True)]
        p_e = sum(r * c for r, c in zip(rows, cols, strict=True))
        return None if abs(1.0 - p_e) < 1e-12 else round((p_o - p_e) / (1.0 - p_e), 4)


class ProbeQualityFigures(View):
    """Probes uploaded in the month and the quality verdict on their faces.

    ``probes``, ``faces`` and ``probes_without_face`` come from the audit log (complete). The
    verdicts come from the probe faces and search records still held: probes are deleted after
    their retention period, so a month older than that has none (``faces_assessed`` says how many
    faces the verdicts cover).
    """

    probes: int
    faces: int
    probes_without_face: int
    faces_assessed: int
    acceptable: int
    poor: int
    poor_reasons: dict[str, int]
    searches_assessed: int
    searches_with_poor_probe: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def share_acceptable(self) -> float | None:
        return _rate(self.acceptable, self.faces_assessed)


class DeletionFigures(View):
    """Deletions in the month, and whether those that fell due were made on time.

    Due deletions: probes and search records at the end of their retention period, subjects at
    their retention date, urgent cases at the end of their window. One is ``late`` when made more
    than the grace (``OversightFigures.deletion_grace_hours``) after it fell due, measured against
    the retention periods in force now; ``due_unknown`` counts those whose due time the log does
    not give (e.g. a subject erased before erasures recorded their retention date).
    """

    probes: int
    probes_late: int
    search_records: int
    search_records_late: int
    subjects: int
    subjects_late: int
    urgent_cases: int
    urgent_cases_late: int
    due_unknown: int
    purged_on_refusal: int  # cases whose material was deleted when authorisation was refused
    probes_purged: int  # probes deleted with a refused or lapsed case
    search_records_purged: int  # search records deleted with a refused or lapsed case
    erased_on_decision: int  # subjects an admin removed from the gallery

    @computed_field  # type: ignore[prop-decorator]
    @property
    def due(self) -> int:
        return self.probes + self.search_records + self.subjects + self.urgent_cases

    @computed_field  # type: ignore[prop-decorator]
    @property
    def late(self) -> int:
        return (
            self.probes_late
            + self.search_records_late
            + self.subjects_late
            + self.urgent_cases_late
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def on_time(self) -> int:
        return self.due - self.late - self.due_unknown

    @computed_field  # type: ignore[prop-decorator]
    @property
    def on_time_rate(self) -> float | None:
        return _rate(self.on_time, self.due - self.due_unknown)


class MonthFigures(View):
    """One calendar month (UTC), ``YYYY-MM``; or ``total`` for the whole period."""

    month: str
    searches: SearchFigures
    authorisations: AuthorisationFigures
    urgent: UrgentFigures
    reviews: ReviewFigures
    probe_quality: ProbeQualityFigures
    deletions: DeletionFigures


class OverdueFigures(View):
    """Held now although due for deletion more than the grace ago: should be zero."""

    probes: int
    search_records: int
    subjects: int
    urgent_cases: int


class OversightFigures(View):
    """Aggregated figures per month for an oversight body: no faces, no names, no references."""

    report: Literal["oversight"] = "oversight"
    generated_at: datetime
    period_start: datetime
    period_end: datetime  # exclusive: the first instant of the month after the last one
    months: list[MonthFigures]  # oldest first; the last is the current month, so far
    total: MonthFigures
    overdue_now: OverdueFigures
    deletion_grace_hours: float
    retention: dict[str, float]  # the periods in force: probe and search record days, urgent hours
    gallery_subjects: int  # subjects in the gallery now
    notice: str
