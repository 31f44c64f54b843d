"""Reading the audit log a page at a time, with filters: the auditor's log browser.

The export (``audit export``) hands over the whole log for offline verification; this is the
on-screen read of it: filtered by actor, action prefix, object type and id, case reference and
time, newest first, a bounded page at a time. :meth:`OversightService.audit_records
<retroface.governance.oversight.OversightService.audit_records>` checks the role and audits the
query; this module only reads.

Blind review holds here too: an account that holds reviewer as well as auditor would read the
other reviewers' decisions (``review.decide`` records carry the decision and its note) on a
search it may still be asked to review. For such an account those records of unsettled searches
are shown without their decision and note (the row stays: who decided, when, on which search),
unless the account made them itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError
from retroface.core.roles import Role
from retroface.core.status import ReviewStatus
from retroface.core.text import check_page, optional_text
from retroface.governance.views import View
from retroface.storage.tables import AuditRecord, SearchRecord

#: At most this many records a page (a page is rendered in full).
MAX_LIMIT = 500
#: What a reviewer-auditor sees instead of another reviewer's unsettled decision.
HIDDEN = "hidden: blind review (the search is not settled)"


class AuditQuery(View):
    """Filters; every one optional. ``action`` is a prefix (``review.`` matches every review
    action); ``since`` is inclusive and ``until`` exclusive, both UTC."""

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    case_ref: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def used(self) -> dict[str, str]:
        """The filters set, as text (what the query's own audit record names)."""
        return {k: str(v) for k, v in self.model_dump().items() if v not in (None, "")}


class AuditEntry(View):
    seq: int
    ts: datetime
    actor: str
    action: str
    case_ref: str | None
    object_type: str | None
    object_id: str | None
    justification: str | None
    details: dict[str, Any]
    redacted: bool = False


class AuditPage(View):
    """One page of matching records, newest first; ``total`` counts every match."""

    query: AuditQuery
    offset: int
    limit: int
    total: int
    items: list[AuditEntry]


def check_query(query: AuditQuery) -> None:
    optional_text(query.actor, "actor", 100)
    optional_text(query.action, "action", 60)
    optional_text(query.object_type, "object type", 60)
    optional_text(query.object_id, "object id", 200)
    optional_text(query.case_ref, "case reference", 100)
    for when in (query.since, query.until):
        if when is not None and when.tzinfo is None:
            raise InvalidInputError("audit query times need a timezone (UTC)")
    if query.since and query.until and query.since >= query.until:
        raise InvalidInputError("the start of the period must be before its end")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(query: AuditQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.actor:
        where.append(AuditRecord.actor == query.actor.strip())
    if query.action:
        where.append(AuditRecord.action.like(_escape_like(query.action.strip()) + "%", escape="\\"))
    if query.object_type:
        where.append(AuditRecord.object_type == query.object_type.strip())
    if query.object_id:
        where.append(AuditRecord.object_id == query.object_id.strip())
    if query.case_ref:
        where.append(AuditRecord.case_ref == query.case_ref.strip())
    if query.since:
        where.append(AuditRecord.ts >= query.since)
    if query.until:
        where.append(AuditRecord.ts < query.until)
    return where


def read_page(
    s: Session, actor: Principal, query: AuditQuery, offset: int, limit: int
) -> AuditPage:
    """Matching records, newest first, blind-review redaction applied (see the module)."""
    check_query(query)
    check_page(offset, limit, MAX_LIMIT)
    where = _where(query)
    total = s.scalar(select(func.count()).select_from(AuditRecord).where(and_(True, *where))) or 0
    rows = s.scalars(
        select(AuditRecord)
        .where(and_(True, *where))
        .order_by(AuditRecord.seq.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    blind = _unsettled_searches(s, rows) if actor.has_role(Role.REVIEWER) else set()
    items = []
    for r in rows:
        hide = r.action == "review.decide" and r.object_id in blind and r.actor != actor.username
        items.append(
            AuditEntry(
                seq=r.seq,
                ts=r.ts,
                actor=r.actor,
                action=r.action,
                case_ref=r.case_ref,
                object_type=r.object_type,
                object_id=r.object_id,
                justification=HIDDEN if hide and r.justification else r.justification,
                details={"decision": HIDDEN} if hide else dict(r.details or {}),
                redacted=hide,
            )
        )
    return AuditPage(query=query, offset=offset, limit=limit, total=total, items=items)


def _unsettled_searches(s: Session, rows: Any) -> set[str]:
    ids = {
        int(r.object_id)
        for r in rows
        if r.action == "review.decide" and r.object_id and r.object_id.isdigit()
    }
    if not ids:
        return set()
    found = s.execute(
        select(SearchRecord.id, SearchRecord.review_status).where(SearchRecord.id.in_(ids))
    ).all()
    settled = {str(i) for i, status in found if ReviewStatus(status).settled}
    # a search deleted since (retention) is gone: nothing left to review, nothing to hide
    return {str(i) for i, _ in found if str(i) not in settled}
