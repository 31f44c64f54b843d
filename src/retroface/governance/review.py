"""Blind two-person review of candidate lists (EU AI Act Art 14(5)).

Two different reviewers, neither of whom ran the search, adjudicate each list without seeing the
other's decision until both are in. Agreement settles the outcome; disagreement goes to a third
reviewer whose decision settles it. Outcomes and agreement are recorded for the transparency
report (Cohen's kappa).

A search that listed no candidate (none reached the operating threshold) is in no queue, and a
decision on it is refused: there is nothing to review. The sheet always shows where the operating
threshold lies and, per candidate, whether it reaches it (investigation-mode lists go below it).

Blindness holds whatever roles an account combines (issue #11, finding 7). Two rules, both
enforced here:

* an account holding reviewer never sees another decision on an unsettled search before its own
  is in, even when it also holds auditor (auditors who are not reviewers see everything: that
  is oversight);
* an account that has seen the decisions on an unsettled search anyway (it viewed them as an
  auditor before it held reviewer, or it exported the audit log, which records every decision
  and note, after one was in) may not review that search: refused and audited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from retroface.core.roles import Role
from retroface.core.status import ReviewStatus
from retroface.core.text import check_id, clean_text
from retroface.governance.team import NEED_TO_KNOW, REVIEW_OPEN, NeedToKnowError, reviewer_sees
from retroface.governance.views import (
    QueueItem,
    ReviewCandidate,
    ReviewEntry,
    ReviewOutcome,
    ReviewSheet,
    ReviewStage,
)
from retroface.search.reference_quality import reference_warnings
from retroface.storage.db import Database
from retroface.storage.tables import AuditRecord, Case, Review, SearchRecord

DECISIONS = ("possible match", "no match", "inconclusive")
_STAGES: tuple[ReviewStage, ...] = ("first", "second", "tiebreak")


def _stage(stored: str) -> ReviewStage:
    """A stage read back from the ``reviews`` table (only this module writes it)."""
    for stage in _STAGES:
        if stored == stage:
            return stage
    raise ValueError(f"unknown review stage {stored!r}")


def _decision_key(decision: str, rank: int | None) -> tuple[str, int | None]:
    """Two reviews agree when the decision matches and, for a possible match, so does the rank."""
    return (decision, rank if decision == "possible match" else None)


class ReviewService:
    def __init__(
        self, db: Database, audit: AuditFn, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    def _search(self, s: Session, search_id: int) -> SearchRecord:
        rec = s.get(SearchRecord, search_id)
        if rec is None:
            raise NotFoundError(f"no search {search_id}")
        return rec

    def queue(self, actor: Principal) -> list[QueueItem]:
        """Searches awaiting this reviewer: not their own, not yet decided by them."""
        self.guard.require(actor, Role.REVIEWER, action="review.queue")
        with self.db.session() as s:
            recs = s.scalars(
                select(SearchRecord)
                .where(SearchRecord.review_status.in_(REVIEW_OPEN))
                .order_by(SearchRecord.started_at)
            ).all()
            out: list[QueueItem] = []
            for rec in recs:
                reviews = s.scalars(select(Review).where(Review.search_id == rec.id)).all()
                if rec.user_id == actor.id or any(r.reviewer_id == actor.id for r in reviews):
                    continue
                if _exposure(s, actor, rec.id, reviews) is not None:
                    continue  # not blind any more: deciding would be refused
                case = s.get(Case, rec.case_id) if rec.case_id else None
                out.append(
                    QueueItem(
                        search_id=rec.id,
                        case=case.reference if case else None,
                        status=ReviewStatus(rec.review_status),
                        needs="tiebreak"
                        if rec.review_status == ReviewStatus.DISPUTED
                        else "review",
                        candidates=len(rec.candidates),
                        started_at=rec.started_at,
                    )
                )
            return out

    def show(self, actor: Principal, search_id: int) -> ReviewSheet:
        """The candidate list for review; other reviewers' decisions stay hidden until settled."""
        check_id(search_id, "search id")
        self.guard.require(
            actor,
            Role.REVIEWER,
            Role.AUDITOR,
            action="review.view",
            object_type="search",
            object_id=search_id,
        )
        self._require_reviewing(actor, search_id)
        with self.db.session() as s:
            rec = self._search(s, search_id)
            reviews = s.scalars(
                select(Review).where(Review.search_id == rec.id).order_by(Review.id)
            ).all()
            settled = ReviewStatus(rec.review_status).settled
            # a reviewer stays blind even if it is an auditor too (see the module)
            oversight = actor.has_role(Role.AUDITOR) and not actor.has_role(Role.REVIEWER)
            visible = [r for r in reviews if settled or r.reviewer_id == actor.id or oversight]
            others_shown = 0 if settled else sum(r.reviewer_id != actor.id for r in visible)
            self.audit(
                s,
                actor=actor,
                action="review.view",
                object_type="search",
                object_id=str(search_id),
                # what an auditor saw before the review settled bars it from reviewing later
                details={"decisions_shown": others_shown} if others_shown else None,
                ts=self.clock(),
            )
            ref_warnings = reference_warnings(s, rec)
            return ReviewSheet(
                search_id=rec.id,
                label=rec.label,
                status=ReviewStatus(rec.review_status),
                outcome=rec.review_outcome,
                candidates=[
                    ReviewCandidate(
                        rank=c.rank,
                        subject=c.subject_reference,
                        similarity=round(c.similarity, 4),
                        above_threshold=None
                        if rec.operating_threshold is None
                        else c.similarity >= rec.operating_threshold,
                        reference_warnings=ref_warnings.get(c.image_id, []) if c.image_id else [],
                    )
                    for c in rec.candidates
                ],
                reviews_in=len(reviews),
                reviews=[
                    ReviewEntry(
                        reviewer_id=r.reviewer_id,
                        stage=_stage(r.stage),
                        decision=r.decision,
                        candidate_rank=r.candidate_rank,
                        note=r.note,
                    )
                    for r in visible
                ],
                hidden=len(reviews) - len(visible),
                probe_quality=rec.probe_quality,
                operating_threshold=rec.operating_threshold,
                operating_source=rec.operating_source,
                mode=rec.mode,
                probe_enhancement=_enhancement_steps(rec.probe_lineage),
            )

    def decide(
        self,
        actor: Principal,
        search_id: int,
        decision: str,
        note: str,
        candidate_rank: int | None = None,
    ) -> ReviewOutcome:
        action = "review.decide"
        check_id(search_id, "search id")
        clean_text(decision, "decision", 40)
        clean_text(note, "note", 5000, multiline=True, required=False)
        self.guard.require(
            actor, Role.REVIEWER, action=action, object_type="search", object_id=search_id
        )
        decision = decision.strip().lower().replace("_", " ")
        if decision not in DECISIONS:
            raise InvalidInputError(f"decision must be one of: {', '.join(DECISIONS)}")
        if decision == "possible match" and candidate_rank is None:
            raise InvalidInputError("a 'possible match' decision must name the candidate rank")
        self._refuse_own_search(actor, search_id, action)
        now = self.clock()
        with self.db.session() as s:
            rec = s.get(SearchRecord, search_id, with_for_update=True)
            if rec is None:
                raise NotFoundError(f"no search {search_id}")
            if rec.review_status == ReviewStatus.NO_CANDIDATES:
                raise ConflictError(
                    f"search {search_id} listed no candidate"
                    + (
                        " above the operating threshold"
                        if rec.operating_threshold is not None
                        else ""
                    )
                    + ": there is nothing to review"
                )
            if candidate_rank is not None and not any(
                c.rank == candidate_rank for c in rec.candidates
            ):
                raise InvalidInputError(
                    f"search {search_id} has no candidate at rank {candidate_rank}"
                )
            reviews = list(s.scalars(select(Review).where(Review.search_id == rec.id)))
            if any(r.reviewer_id == actor.id for r in reviews):
                raise ConflictError(f"{actor.username} has already reviewed search {search_id}")
            if ReviewStatus(rec.review_status).settled:
                raise ConflictError(f"search {search_id} is already settled ({rec.review_outcome})")
            stage = _STAGES[min(len(reviews), 2)]
            review = Review(
                search_id=rec.id,
                reviewer_id=actor.id,
                stage=stage,
                decision=decision,
                candidate_rank=candidate_rank if decision == "possible match" else None,
                note=note.strip() or None,
                created_at=now,
            )
            s.add(review)
            reviews.append(review)
            if stage == "first":
                rec.review_status = ReviewStatus.IN_REVIEW
            elif stage == "second":
                a, b = (_decision_key(r.decision, r.candidate_rank) for r in reviews[:2])
                if a == b:
                    rec.review_status = ReviewStatus.AGREED
                    rec.review_outcome = self._outcome(reviews[0])
                else:
                    rec.review_status = ReviewStatus.DISPUTED
            else:
                rec.review_status = ReviewStatus.RESOLVED
                rec.review_outcome = self._outcome(review)
            s.flush()
            case = s.get(Case, rec.case_id) if rec.case_id else None
            self.audit(
                s,
                actor=actor,
                action="review.decide",
                case_ref=case.reference if case else None,
                object_type="search",
                object_id=str(search_id),
                justification=note,
                details={"stage": stage, "decision": decision, "rank": candidate_rank},
                ts=now,
            )
            return ReviewOutcome(
                search_id=rec.id,
                stage=stage,
                status=ReviewStatus(rec.review_status),
                outcome=rec.review_outcome,
            )

    def _refuse_own_search(self, actor: Principal, search_id: int, action: str) -> None:
        """Separation of duties: whoever ran a search may not review it, and whoever has seen
        another decision on it may not either (blindness); each refusal audited."""
        with self.db.session() as s:
            rec = self._search(s, search_id)
            ran_by, case = rec.user_id, s.get(Case, rec.case_id) if rec.case_id else None
            case_ref = case.reference if case else None
            reviews = s.scalars(select(Review).where(Review.search_id == search_id)).all()
            exposure = None
            if not ReviewStatus(rec.review_status).settled:
                exposure = _exposure(s, actor, search_id, reviews)
        refusal = None
        if ran_by == actor.id:
            refusal = PermissionDeniedError(
                f"{actor.username} ran search {search_id} and may not review it "
                "(separation of duties)"
            )
        elif exposure is not None:
            refusal = PermissionDeniedError(
                f"{actor.username} {exposure} before deciding, so is no longer blind to it and "
                f"may not review search {search_id} (blind review)"
            )
        if refusal is not None:
            self.guard.refused(
                actor,
                action,
                refusal,
                case_ref=case_ref,
                object_type="search",
                object_id=search_id,
            )
            raise refusal

    def _require_reviewing(self, actor: Principal, search_id: int) -> None:
        """Need-to-know: a reviewer sees a search in their queue or one they reviewed; an
        auditor sees all (refusal audited as ``review.view.refused``, reason need_to_know)."""
        with self.db.session() as s:
            rec = self._search(s, search_id)
            allowed = actor.has_role(Role.AUDITOR) or reviewer_sees(s, actor, rec)
            case = s.get(Case, rec.case_id) if rec.case_id else None
            case_ref = case.reference if case else None
        if not allowed:
            refusal = NeedToKnowError(
                f"{actor.username} may not see search {search_id}: it is not in their review "
                "queue and they did not review it"
            )
            self.guard.refused(
                actor,
                "review.view",
                refusal,
                case_ref=case_ref,
                object_type="search",
                object_id=search_id,
                details={"reason": NEED_TO_KNOW},
            )
            raise refusal

    @staticmethod
    def _outcome(review: Review) -> str:
        if review.decision == "possible match":
            return f"possible match: rank {review.candidate_rank}"
        return review.decision


def _exposure(
    s: Session, actor: Principal, search_id: int, reviews: Sequence[Review]
) -> str | None:
    """How ``actor`` has seen another reviewer's decision on this search, or None.

    Read from the audit trail, which records every viewing: a ``review.view`` that showed others'
    decisions (only an auditor who was not then a reviewer gets one), or an ``audit.export`` (the
    log holds each decision and its note) made once a decision was in.
    """
    if any(r.reviewer_id == actor.id for r in reviews):
        return None  # decided already: deciding again is refused as a conflict
    others = [r.created_at for r in reviews]
    if not others:
        return None
    seen = s.scalars(
        select(AuditRecord.details).where(
            AuditRecord.actor == actor.username,
            AuditRecord.action == "review.view",
            AuditRecord.object_type == "search",
            AuditRecord.object_id == str(search_id),
        )
    ).all()
    if any((d or {}).get("decisions_shown") for d in seen):
        return "has seen another reviewer's decision on this search"
    exported = s.scalar(
        select(AuditRecord.seq)
        .where(
            AuditRecord.actor == actor.username,
            AuditRecord.action == "audit.export",
            AuditRecord.ts >= min(others),
        )
        .limit(1)
    )
    if exported is not None:
        return "exported the audit log, which holds another reviewer's decision on this search,"
    return None


def _enhancement_steps(lineage: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The steps from the original to the searched version, as the search record stores them."""
    if not lineage:
        return None
    return [step for d in lineage.get("derivations", []) for step in d.get("steps", [])]
