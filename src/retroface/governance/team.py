"""Need-to-know: who may see a case, its probes, searches and exports, and who may work on it.

A case belongs to the operator who opened it (``cases.opened_by``). The owner adds the operators
who work on it with them (``member``); an authoriser adds ``supervisor``s. Roles still say *what*
someone may do (only an operator searches); the team says *on which case*. Everyone else is
refused, and the refusal is audited as ``<action>.refused`` with reason ``need_to_know``:

- owner, members, supervisors: see the case, add probes, search, view and export its searches;
- auditor: sees every case and search and may export them, read-only (no probes, no searches,
  even for an account that also holds the operator role, unless it is on the team);
- authoriser: sees the cases awaiting a decision and the ones they decided, not their searches;
- reviewer: sees the searches in their review queue (open, run by someone else) and those they
  reviewed: the candidate list is what they adjudicate; not the case;
- admin: none; accounts, not casework.
- oversight: none, refused by role before need-to-know is asked (aggregated figures only).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, or_, select, true
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
from retroface.core.roles import INTERNAL_ROLES, Role, parse_roles
from retroface.core.status import CaseStatus, ReviewStatus
from retroface.governance.views import TeamMemberView
from retroface.storage.db import Database
from retroface.storage.tables import Case, CaseMember, Review, SearchRecord, User

TeamRole = Literal["member", "supervisor"]
MEMBER: TeamRole = "member"
SUPERVISOR: TeamRole = "supervisor"
#: The review statuses a search is in a reviewer's queue with (as ``ReviewService.queue``).
REVIEW_OPEN = (ReviewStatus.PENDING, ReviewStatus.IN_REVIEW, ReviewStatus.DISPUTED)
#: The ``reason`` of every need-to-know refusal in the audit log.
NEED_TO_KNOW = "need_to_know"


class NeedToKnowError(PermissionDeniedError):
    """The caller holds the role but has no business with this case or search (403)."""


# ----------------------------------------------------------------------------- the rules


def on_team(s: Session, actor: Principal, case: Case) -> bool:
    """The owner, a member or a supervisor of ``case``."""
    if case.opened_by == actor.id:
        return True
    member = select(CaseMember.id).where(
        CaseMember.case_id == case.id, CaseMember.user_id == actor.id
    )
    return s.scalar(member) is not None


def authoriser_sees(actor: Principal, case: Case) -> bool:
    """An authoriser sees what awaits a decision and what they decided."""
    return actor.has_role(Role.AUTHORISER) and (
        case.status == CaseStatus.PENDING or case.decided_by == actor.id
    )


def may_see_case(s: Session, actor: Principal, case: Case) -> bool:
    return actor.has_role(Role.AUDITOR) or authoriser_sees(actor, case) or on_team(s, actor, case)


def reviewer_sees(s: Session, actor: Principal, record: SearchRecord) -> bool:
    """A search in the reviewer's queue (open, not their own), or one they reviewed."""
    if not actor.has_role(Role.REVIEWER):
        return False
    reviewed = select(Review.id).where(
        Review.search_id == record.id, Review.reviewer_id == actor.id
    )
    if s.scalar(reviewed) is not None:
        return True
    return record.user_id != actor.id and record.review_status in REVIEW_OPEN


def may_see_search(s: Session, actor: Principal, record: SearchRecord, export: bool) -> bool:
    """The case's team and auditors; reviewers too for a search they review, unless exporting."""
    if actor.has_role(Role.AUDITOR):
        return True
    case = s.get(Case, record.case_id) if record.case_id is not None else None
    if case is not None and on_team(s, actor, case):
        return True
    return not export and reviewer_sees(s, actor, record)


def visible_cases(actor: Principal) -> ColumnElement[bool]:
    """A filter on ``cases``: those ``actor`` may see (for listing)."""
    if actor.has_role(Role.AUDITOR):
        return true()
    conditions: list[ColumnElement[bool]] = [
        Case.opened_by == actor.id,
        Case.id.in_(select(CaseMember.case_id).where(CaseMember.user_id == actor.id)),
    ]
    if actor.has_role(Role.AUTHORISER):
        conditions += [Case.status == CaseStatus.PENDING, Case.decided_by == actor.id]
    return or_(*conditions)


# ----------------------------------------------------------------------------- the service


class TeamService:
    """A case's team: who may be on it, the audited changes, and the need-to-know checks that the
    case, search and footage services make before they act."""

    def __init__(
        self, db: Database, audit: AuditFn, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    # -- checks used by the other services

    def require_case(self, actor: Principal, reference: str, action: str, work: bool) -> None:
        """Return if ``actor`` may see (``work=False``) or work on (``work=True``: add probes,
        search) the case; else audit ``<action>.refused`` (need_to_know) and raise.

        An unknown case is :class:`NotFoundError`, as before this check existed.
        """
        with self.db.session() as s:
            case = _case(s, reference)
            allowed = on_team(s, actor, case) if work else may_see_case(s, actor, case)
        if not allowed:
            doing = "work on" if work else "see"
            self._refuse(
                actor,
                action,
                f"{actor.username} may not {doing} case {reference}: not on its team",
                case_ref=reference,
                object_type="case",
                object_id=reference,
            )

    def require_search(self, actor: Principal, search_id: int, action: str, export: bool) -> None:
        """Return if ``actor`` may view (or export) the search; else audit and raise."""
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            if record is None:
                raise NotFoundError(f"no search {search_id}")
            allowed = may_see_search(s, actor, record, export)
            case = s.get(Case, record.case_id) if record.case_id is not None else None
            case_ref = case.reference if case else None
        if not allowed:
            self._refuse(
                actor,
                action,
                f"{actor.username} may not see search {search_id}: not on the team of its case"
                + ("" if export else " nor reviewing it"),
                case_ref=case_ref,
                object_type="search",
                object_id=search_id,
            )

    # -- the team itself

    def members(self, actor: Principal, reference: str) -> list[TeamMemberView]:
        """The owner first, then members and supervisors in the order they were added."""
        self.guard.require(actor, *INTERNAL_ROLES, action="case.team.list", case_ref=reference)
        self.require_case(actor, reference, "case.team.list", work=False)
        with self.db.session() as s:
            case = _case(s, reference)
            owner = s.get(User, case.opened_by)
            out = [
                TeamMemberView(
                    username=owner.username if owner else str(case.opened_by),
                    role="owner",
                    added_by=None,
                    added_at=case.opened_at,
                )
            ]
            rows = s.execute(
                select(CaseMember, User.username)
                .join(User, User.id == CaseMember.user_id)
                .where(CaseMember.case_id == case.id)
                .order_by(CaseMember.id)
            ).all()
            adders = _usernames(s, {m.added_by for m, _ in rows})
            out += [
                TeamMemberView(
                    username=name,
                    role=_team_role(m.role),
                    added_by=adders.get(m.added_by),
                    added_at=m.added_at,
                )
                for m, name in rows
            ]
            return out

    def add(
        self, actor: Principal, reference: str, username: str, role: TeamRole = MEMBER
    ) -> TeamMemberView:
        """The owner adds operators as members; an authoriser adds supervisors (audited)."""
        action = "case.team.add"
        self._require_may_change(actor, reference, role, action)
        now = self.clock()
        with self.db.session() as s:
            case = _case(s, reference)
            user = _user(s, username)
            if not user.active:
                raise InvalidInputError(f"user {user.username!r} is disabled")
            if Role.OPERATOR not in parse_roles(user.roles):
                raise InvalidInputError(
                    f"{user.username} is not an operator: a case's team is the operators who "
                    "work on it (auditors see every case already)"
                )
            if user.id == case.opened_by:
                raise ConflictError(f"{user.username} owns case {reference}")
            if s.scalar(
                select(CaseMember.id).where(
                    CaseMember.case_id == case.id, CaseMember.user_id == user.id
                )
            ):
                raise ConflictError(f"{user.username} is already on the team of case {reference}")
            s.add(
                CaseMember(
                    case_id=case.id, user_id=user.id, role=role, added_by=actor.id, added_at=now
                )
            )
            self.audit(
                s,
                actor=actor,
                action=action,
                case_ref=reference,
                object_type="user",
                object_id=user.username,
                details={"role": role},
                ts=now,
            )
            return TeamMemberView(
                username=user.username, role=role, added_by=actor.username, added_at=now
            )

    def remove(self, actor: Principal, reference: str, username: str) -> TeamMemberView:
        """The owner removes members; an authoriser removes supervisors (audited)."""
        action = "case.team.remove"
        with self.db.session() as s:
            case = _case(s, reference)
            user = _user(s, username)
            member = s.scalar(
                select(CaseMember).where(
                    CaseMember.case_id == case.id, CaseMember.user_id == user.id
                )
            )
            role = _team_role(member.role) if member else MEMBER
        self._require_may_change(actor, reference, role, action)
        if member is None:
            raise NotFoundError(f"{user.username} is not on the team of case {reference}")
        now = self.clock()
        with self.db.session() as s:
            row = s.get(CaseMember, member.id)
            if row is None:
                raise NotFoundError(f"{user.username} is not on the team of case {reference}")
            view = TeamMemberView(
                username=user.username,
                role=role,
                added_by=_usernames(s, {row.added_by}).get(row.added_by),
                added_at=row.added_at,
            )
            s.delete(row)
            self.audit(
                s,
                actor=actor,
                action=action,
                case_ref=reference,
                object_type="user",
                object_id=user.username,
                details={"role": role},
                ts=now,
            )
            return view

    def _require_may_change(
        self, actor: Principal, reference: str, role: TeamRole, action: str
    ) -> None:
        """Members are the owner's to choose; supervisors an authoriser's who sees the case."""
        if role == SUPERVISOR:
            self.guard.require(actor, Role.AUTHORISER, action=action, case_ref=reference)
            with self.db.session() as s:
                allowed = authoriser_sees(actor, _case(s, reference))
            if not allowed:
                self._refuse(
                    actor,
                    action,
                    f"{actor.username} neither decides nor decided case {reference}",
                    case_ref=reference,
                    object_type="case",
                    object_id=reference,
                )
            return
        if role != MEMBER:
            raise InvalidInputError("a team role is 'member' or 'supervisor'")
        self.guard.require(actor, Role.OPERATOR, action=action, case_ref=reference)
        with self.db.session() as s:
            owner = _case(s, reference).opened_by
        if owner != actor.id:
            self._refuse(
                actor,
                action,
                f"only the operator who opened case {reference} chooses its team",
                case_ref=reference,
                object_type="case",
                object_id=reference,
            )

    def _refuse(
        self,
        actor: Principal,
        action: str,
        message: str,
        *,
        case_ref: str | None,
        object_type: str,
        object_id: str | int,
    ) -> None:
        error = NeedToKnowError(message)
        self.guard.refused(
            actor,
            action,
            error,
            case_ref=case_ref,
            object_type=object_type,
            object_id=object_id,
            details={"reason": NEED_TO_KNOW},
        )
        raise error


def _case(s: Session, reference: str) -> Case:
    case = s.scalar(select(Case).where(Case.reference == reference))
    if case is None:
        raise NotFoundError(f"no case {reference!r}")
    return case


def _user(s: Session, username: str) -> User:
    user = s.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    return user


def _usernames(s: Session, ids: set[int]) -> dict[int, str]:
    return dict(s.execute(select(User.id, User.username).where(User.id.in_(ids))).all())


def _team_role(stored: str) -> TeamRole:
    return SUPERVISOR if stored == SUPERVISOR else MEMBER
