"""Cases and their authorisation: no search happens outside an authorised purpose.

EU AI Act Art 26(10): each use of RFR is authorised for a specific offence, by someone other than
the requester; an urgent use may go first but must be authorised within a window, and if it is
refused (or the window lapses) everything the use produced is deleted.

The deletion is immediate and final: a refusal purges at once; a lapsed window purges at the first
touch of the case afterwards (authorise, show, list, probe upload, search) and, untouched, at the
next scheduled retention run (every few minutes in ``serve``, or ``retention run`` from cron). A
purged case can never be authorised again: its material is gone, and reviving it would turn the
urgent route into a way round prior authorisation.

An approval may also allow *investigation mode* (issue #13): searches under the case then list
the top-k candidates whatever their score, those below the model's operating threshold marked
so, as NIST describes investigative use. Without it every list is cut at the operating threshold.
It is the authoriser's decision, not the operator's, because it trades more false candidates
for fewer missed ones, and it is stored, audited and shown with the case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.core.access import SYSTEM_ACTOR, AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from retroface.core.roles import INTERNAL_ROLES, Role
from retroface.core.status import CaseStatus
from retroface.core.text import case_reference, clean_text
from retroface.governance.policy import MAX_AUTHORISATION_DAYS, GovernancePolicy
from retroface.governance.team import TeamService, visible_cases
from retroface.governance.views import CaseView
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.references import delete_probes, still_referenced
from retroface.storage.tables import Case, Probe, SearchRecord

#: The justification of the ``case.purge`` record of a lapsed urgent case.
LAPSED_REASON = "urgent window expired without authorisation"


def _purged_message(reference: str, status: str, purged_at: datetime) -> str:
    when = f"{purged_at:%Y-%m-%d %H:%M} UTC"
    why = (
        f"the urgent window of case {reference} ended without authorisation"
        if status == CaseStatus.EXPIRED
        else f"case {reference} was {status}"
    )
    return (
        f"{why}, so its probes and searches were deleted ({when}); it cannot be authorised or "
        "searched again: open a new case"
    )


class CaseNotSearchableError(PermissionDeniedError):
    """No search may run under this case now (pending, refused, expired, lapsed urgent window).

    A refusal like any other (code ``forbidden``); its own class so that the services running
    searches can audit it as ``<action>.refused`` without catching unrelated errors.
    """


@dataclass(frozen=True)
class PurgeResult:
    case: str
    probes: int
    searches: int
    files_deleted: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class CaseService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        policy: GovernancePolicy,
        audit: AuditFn,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.policy = policy
        self.audit = audit  # audit(session, actor=..., action=..., ...)
        self.clock = clock
        self.guard = Guard(db, audit, clock)
        self.team = TeamService(db, audit, clock)  # need-to-know: who sees and works on a case

    def get(self, s: Session, reference: str) -> Case:
        case = s.scalar(select(Case).where(Case.reference == reference))
        if case is None:
            raise NotFoundError(f"no case {reference!r}")
        return case

    def open(
        self,
        actor: Principal,
        reference: str,
        offence_category: str,
        purpose: str,
        justification: str,
        urgent: bool = False,
    ) -> CaseView:
        reference = case_reference(reference)
        clean_text(offence_category, "offence category", 100)
        clean_text(purpose, "purpose", 5000, multiline=True)
        clean_text(justification, "justification", 5000, multiline=True)
        self.guard.require(actor, Role.OPERATOR, action="case.open", case_ref=reference)
        self.policy.check_offence(offence_category)
        reference = reference.strip()
        if not reference:
            raise InvalidInputError("a case needs a reference")
        if len(purpose.strip()) < 10 or len(justification.strip()) < 20:
            raise InvalidInputError(
                "state the purpose (at least 10 characters) and why the search is necessary and "
                "proportionate (justification, at least 20 characters)"
            )
        now = self.clock()
        with self.db.session() as s:
            if s.scalar(select(Case.id).where(Case.reference == reference)):
                raise ConflictError(f"case {reference!r} already exists")
            case = Case(
                reference=reference,
                offence_category=offence_category,
                purpose=purpose.strip(),
                justification=justification.strip(),
                urgent=urgent,
                urgent_deadline=now + self.policy.urgent_window if urgent else None,
                opened_by=actor.id,
                opened_at=now,
                status=CaseStatus.PENDING,
            )
            s.add(case)
            s.flush()
            self.audit(
                s,
                actor=actor,
                action="case.open",
                case_ref=reference,
                object_type="case",
                object_id=reference,
                justification=justification,
                details={"offence": offence_category, "urgent": urgent, "purpose": purpose},
                ts=now,
            )
            return CaseView.model_validate(case)

    def authorise(
        self,
        actor: Principal,
        reference: str,
        approve: bool,
        note: str,
        valid_days: float | None = None,
        investigation_mode: bool = False,
    ) -> CaseView:
        action = "case.authorise"
        reference = case_reference(reference)
        clean_text(note, "note", 5000, multiline=True, required=False)
        self.guard.require(actor, Role.AUTHORISER, action=action, case_ref=reference)
        if not note.strip():
            raise InvalidInputError("an authorisation decision needs a note giving its reasons")
        if investigation_mode and not approve:
            raise InvalidInputError("investigation mode is allowed by an approval, not a refusal")
        if valid_days is not None and not 0 < valid_days <= MAX_AUTHORISATION_DAYS:
            # an authorisation is for a specific use, reviewed at least yearly; 3650 days was
            # accepted before (#11), which is no review at all
            raise InvalidInputError(
                f"an authorisation lasts at most {MAX_AUTHORISATION_DAYS} days; "
                "ask again when it ends"
            )
        self.purge_lapsed(reference)  # a lapsed window is purged before anything is decided
        now = self.clock()
        with self.db.session() as s:
            case = self.get(s, reference)
            opened_by, purged_at, status = case.opened_by, case.purged_at, case.status
        if purged_at is not None:
            refusal = PermissionDeniedError(_purged_message(reference, status, purged_at))
            self.refused(actor, action, refusal, reference, details={"status": status})
            raise refusal
        if opened_by == actor.id:
            refusal = PermissionDeniedError(
                f"{actor.username} opened case {reference} and may not authorise it "
                "(separation of duties)"
            )
            self.refused(actor, action, refusal, reference)
            raise refusal
        with self.db.session() as s:
            case = self.get(s, reference)
            if case.status != CaseStatus.PENDING:
                raise ConflictError(f"case {reference} is already {case.status}")
            case.decided_by = actor.id
            case.decided_at = now
            case.decision_note = note.strip()
            if approve:
                case.status = CaseStatus.APPROVED
                days = valid_days or self.policy.authorisation_days
                case.authorised_until = now + timedelta(days=days)
                case.investigation_mode = investigation_mode
            else:
                case.status = CaseStatus.REFUSED
            self.audit(
                s,
                actor=actor,
                action="case.approve" if approve else "case.refuse",
                case_ref=reference,
                object_type="case",
                object_id=reference,
                justification=note,
                details={
                    "urgent": case.urgent,
                    "authorised_until": case.authorised_until.isoformat()
                    if case.authorised_until
                    else None,
                    "investigation_mode": bool(case.investigation_mode),
                },
                ts=now,
            )
        if not approve:
            self.purge(reference, actor=actor, reason="authorisation refused")
        with self.db.session() as s:
            return CaseView.model_validate(self.get(s, reference))

    def require_searchable(self, s: Session, reference: str) -> Case:
        """The case if a search may run under it now; otherwise :class:`CaseNotSearchableError`.

        Runs inside the caller's session and writes nothing: the caller audits the refusal once
        its session is closed (see :meth:`check_searchable`), since SQLite allows one writer.
        """
        case = self.get(s, reference)
        now = self.clock()
        if case.status == CaseStatus.APPROVED:
            if case.authorised_until and case.authorised_until < now:
                raise CaseNotSearchableError(
                    f"the authorisation of case {reference} expired on "
                    f"{case.authorised_until:%Y-%m-%d %H:%M} UTC; ask for a new one"
                )
            return case
        if case.status == CaseStatus.PENDING and case.urgent:
            if case.urgent_deadline and case.urgent_deadline >= now:
                return case
            # purge_lapsed runs before this check in every caller; only a race gets here
            raise CaseNotSearchableError(
                f"the urgent window of case {reference} ended without authorisation; "
                "its probes and searches are being deleted"
            )
        if case.status == CaseStatus.PENDING:
            raise CaseNotSearchableError(
                f"case {reference} is awaiting authorisation: no search may run until an "
                "authoriser approves it (or open it as urgent)"
            )
        if case.purged_at is not None:
            raise CaseNotSearchableError(_purged_message(reference, case.status, case.purged_at))
        raise CaseNotSearchableError(f"case {reference} is {case.status}: no search may run")

    def check_searchable(self, actor: Principal, reference: str, action: str) -> None:
        """Return if a search may run under the case now; else audit ``<action>.refused`` and
        raise. For callers that check before long work (a probe upload, a footage scan)."""
        reference = case_reference(reference)
        self.purge_lapsed(reference)
        try:
            with self.db.session() as s:
                self.require_searchable(s, reference)
        except CaseNotSearchableError as exc:
            self.refused(actor, action, exc, reference)
            raise

    def refused(
        self,
        actor: Principal,
        action: str,
        error: PermissionDeniedError,
        reference: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Audit a refusal to act under a case (called after the caller's session closed)."""
        self.guard.refused(
            actor,
            action,
            error,
            case_ref=reference,
            object_type="case",
            object_id=reference,
            details=details,
        )

    def list_cases(
        self, actor: Principal, status: CaseStatus | str | None = None
    ) -> list[CaseView]:
        """The cases ``actor`` has need-to-know of (see :mod:`retroface.governance.team`)."""
        if status:
            clean_text(status, "status", 20)
        self.guard.require(actor, *INTERNAL_ROLES, action="case.list")
        self.purge_lapsed()
        with self.db.session() as s:
            q = select(Case).where(visible_cases(actor)).order_by(Case.opened_at.desc())
            if status:
                q = q.where(Case.status == status)
            return [CaseView.model_validate(c) for c in s.scalars(q)]

    def show(self, actor: Principal, reference: str) -> CaseView:
        reference = case_reference(reference)
        self.guard.require(actor, *INTERNAL_ROLES, action="case.show", case_ref=reference)
        self.purge_lapsed(reference)
        self.team.require_case(actor, reference, "case.show", work=False)
        with self.db.session() as s:
            return CaseView.model_validate(self.get(s, reference))

    def purge_lapsed(self, reference: str | None = None) -> list[PurgeResult]:
        """Purge urgent cases whose window ended without authorisation (one, or all).

        Called on every touch of a case, so a lapsed case's material never outlives its first
        use after the deadline; the actor is the system, which is who decided.
        """
        now = self.clock()
        with self.db.session() as s:
            q = select(Case.reference).where(
                Case.status == CaseStatus.PENDING,
                Case.urgent.is_(True),
                Case.urgent_deadline < now,
            )
            if reference is not None:
                q = q.where(Case.reference == reference)
            due = list(s.scalars(q))
        return [self.purge(ref, SYSTEM_ACTOR, LAPSED_REASON) for ref in due]

    def purge(self, reference: str, actor: str | Principal, reason: str) -> PurgeResult:
        """Delete every probe, face, search and result of a case; files after the rows commit."""
        now = self.clock()
        with self.db.session() as s:
            case = self.get(s, reference)
            probes = list(s.scalars(select(Probe).where(Probe.case_id == case.id)))
            hashes = {p.content_hash for p in probes}
            searches = list(s.scalars(select(SearchRecord).where(SearchRecord.case_id == case.id)))
            for rec in searches:
                s.delete(rec)
            delete_probes(s, probes)  # enhanced versions before their originals
            if case.status == CaseStatus.PENDING:
                case.status = CaseStatus.EXPIRED if case.urgent else CaseStatus.REFUSED
            case.purged_at = now
            shared = still_referenced(s, hashes)
            self.audit(
                s,
                actor=actor,
                action="case.purge",
                case_ref=reference,
                object_type="case",
                object_id=reference,
                justification=reason,
                details={"probes": len(probes), "searches": len(searches)},
                ts=now,
            )
        deleted = sum(self.blobs.delete(h) for h in hashes - shared)
        return PurgeResult(reference, len(probes), len(searches), deleted)
