"""Monthly oversight figures: what an ethics panel or a regulator asks a force to publish.

Counts per calendar month (UTC) of searches, authorisations, urgent use, review outcomes and
reviewer agreement, probe quality and deletions (and whether those were on time), computed from
the live database and the audit log. The output names nobody: no username, case reference,
subject or face, only counts under a fixed vocabulary (see ``governance.views``).

Where the figures come from, and why:

* events come from the audit log, which is never trimmed, so a month's figures do not shrink
  when its search records and probes are deleted at the end of their retention period (or at
  once when an authorisation is refused); authorisations come from the ``cases`` rows, which are
  never deleted either (a purged case keeps its row, marked ``purged_at``);
* the quality verdicts are the one exception: they are stored only on probe faces and search
  records, so they cover what is still held (``faces_assessed`` says how much);
* counting is done by the database (``GROUP BY`` month, ``storage.sqlfunc.utc_month``) wherever
  a count is all that is needed. Python walks rows only where a figure needs the rows themselves,
  all bounded by the activity of the period, never the whole history: decision times (cases
  decided in the period), review pairs (decisions in the period and the first decisions they
  answer), deletion due times (the records deleted in the period and the uploads they deleted),
  poor-quality reasons (faces held, themselves bounded by the probe retention period).

This module only computes; :class:`retroface.governance.oversight.OversightService` checks the
caller's role and audits the request.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from retroface.core.errors import InvalidInputError
from retroface.core.status import CaseStatus
from retroface.gallery.service import gallery_stats
from retroface.governance.cases import LAPSED_REASON
from retroface.governance.reports import LEADS_NOTICE, NO_CASE
from retroface.governance.review import DECISIONS
from retroface.governance.views import (
    AuthorisationFigures,
    DeletionFigures,
    MonthFigures,
    OverdueFigures,
    OversightFigures,
    ProbeQualityFigures,
    ReviewFigures,
    SearchFigures,
    UrgentFigures,
)
from retroface.storage.sqlfunc import json_array_length, utc_month
from retroface.storage.tables import AuditRecord, Case, Probe, ProbeFace, SearchRecord, Subject

if TYPE_CHECKING:
    from retroface.governance.policy import GovernancePolicy
    from retroface.storage.db import Database

#: A deletion made within this time of falling due is on time. The retention scheduler of
#: ``serve`` runs every 5 minutes by default; a deployment without a server runs ``retention run``
#: from cron, typically once a day, so a day is what "on schedule" can promise for both.
DELETION_GRACE = timedelta(days=1)
#: At most five years in one request: 60 rows, and a bound on what the queries read.
MAX_MONTHS = 60
TOTAL = "total"
#: Refused attempts to upload a probe or to search (no authorisation, wrong role, not on the team).
REFUSED_SEARCH_ACTIONS = (
    "probe.add.refused",
    "search.run.refused",
    "video.find.refused",
    "video.search.refused",
)
_COUNTED_ACTIONS = (
    "search.run",
    "video.find",
    "search.export",
    "probe.add",
    *REFUSED_SEARCH_ACTIONS,
)
_CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits

A = AuditRecord


class FiguresSource(Protocol):
    """What the figures read; ``OversightService`` provides it."""

    @property
    def db(self) -> Database: ...
    @property
    def policy(self) -> GovernancePolicy: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


# ----------------------------------------------------------------------------- the period


def month_key(ts: datetime) -> str:
    return f"{ts.astimezone(UTC):%Y-%m}"


def month_bounds(now: datetime, months: int) -> list[datetime]:
    """The first instant of each of the last ``months`` months (the current one last), and of the
    month after: ``months + 1`` bounds, so month ``i`` is ``[bounds[i], bounds[i + 1])``."""
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= MAX_MONTHS:
        raise InvalidInputError(f"months must be a whole number from 1 to {MAX_MONTHS}")
    now = now.astimezone(UTC)
    index = now.year * 12 + now.month - 1 - (months - 1)
    return [datetime(i // 12, i % 12 + 1, 1, tzinfo=UTC) for i in range(index, index + months + 1)]


# ----------------------------------------------------------------------------- the figures


def monthly(app: FiguresSource, months: int = 12) -> OversightFigures:
    """The figures for the last ``months`` calendar months, the current one (so far) last."""
    now = app.clock()
    bounds = month_bounds(now, months)
    start, end = bounds[0], bounds[-1]
    keys = [month_key(b) for b in bounds[:-1]]
    policy = app.policy
    # one snapshot for every query, and no write lock held while they run (see read_session)
    with app.db.read_session() as s:
        counts = _audit_counts(s, start, end)
        searches = _searches(s, start, end, counts)
        cases = _cases(s, start, end, now)
        reviews = _reviews(s, start, end)
        quality = _quality(s, start, end, counts)
        deletions = _deletions(s, start, end, policy)
        overdue = _overdue(s, now, policy)
    sections = {
        "searches": searches,
        "authorisations": cases["authorisations"],
        "urgent": cases["urgent"],
        "reviews": reviews,
        "probe_quality": quality,
        "deletions": deletions,
    }
    rows = [_month(key, sections) for key in keys]
    return OversightFigures(
        generated_at=now,
        period_start=start,
        period_end=end,
        months=rows,
        total=_month(TOTAL, sections),
        overdue_now=overdue,
        deletion_grace_hours=DELETION_GRACE.total_seconds() / 3600,
        retention={
            "probe_days": policy.probe_retention_days,
            "search_record_days": policy.search_record_retention_days,
            "urgent_window_hours": policy.urgent_window_hours,
        },
        gallery_subjects=gallery_stats(app.db).subjects,
        notice=LEADS_NOTICE,
    )


class _Tally:
    """Counters per month key and for the whole period (``total``), filled together."""

    def __init__(self) -> None:
        self.by: dict[str, Counter[str]] = defaultdict(Counter)

    def add(self, month: str, field: str, n: int = 1) -> None:
        self.by[month][field] += n
        self.by[TOTAL][field] += n

    def get(self, month: str) -> Counter[str]:
        return self.by.get(month, Counter())


def _month(key: str, sections: Mapping[str, Any]) -> MonthFigures:
    return MonthFigures(month=key, **{name: build(key) for name, build in sections.items()})


def _in(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(column >= start, column < end)


def _audit_counts(s: Session, start: datetime, end: datetime) -> _Tally:
    """How many records of each counted action per month: one grouped query."""
    month = utc_month(A.ts)
    tally = _Tally()
    rows = s.execute(
        select(month, A.action, func.count())
        .where(_in(A.ts, start, end), A.action.in_(_COUNTED_ACTIONS))
        .group_by(month, A.action)
    ).all()
    for m, action, n in rows:
        tally.add(m, action, n)
    return tally


# -- searches


def _searches(
    s: Session, start: datetime, end: datetime, counts: _Tally
) -> Callable[[str], SearchFigures]:
    month = utc_month(A.ts)
    run = and_(A.action == "search.run", _in(A.ts, start, end))
    offence: dict[str, Counter[str]] = defaultdict(Counter)
    for m, category, n in s.execute(
        select(month, Case.offence_category, func.count())
        .select_from(A)
        .outerjoin(Case, Case.reference == A.case_ref)
        .where(run)
        .group_by(month, Case.offence_category)
    ).all():
        for key in (m, TOTAL):
            offence[key][category or NO_CASE] += n
    empty = _Tally()
    for m, n in s.execute(
        select(month, func.count())
        .where(run, json_array_length(A.details, "candidates") == 0)
        .group_by(month)
    ).all():
        empty.add(m, "n", n)

    def build(key: str) -> SearchFigures:
        c = counts.get(key)
        return SearchFigures(
            run=c["search.run"],
            by_offence=dict(sorted(offence.get(key, Counter()).items())),
            no_candidates=empty.get(key)["n"],
            footage_scans=c["video.find"],
            attempts_refused=sum(c[a] for a in REFUSED_SEARCH_ACTIONS),
            disclosures=c["search.export"],
        )

    return build


# -- authorisations and the urgent route


def _cases(
    s: Session, start: datetime, end: datetime, now: datetime
) -> dict[str, Callable[[str], Any]]:
    t = _Tally()
    opened = utc_month(Case.opened_at)
    for m, is_urgent, n in s.execute(
        select(opened, Case.urgent, func.count())
        .where(_in(Case.opened_at, start, end))
        .group_by(opened, Case.urgent)
    ).all():
        t.add(m, "requested", n)
        if is_urgent:
            t.add(m, "urgent_opened", n)
    # still awaiting a decision now: pending, and (if urgent) still within the window
    awaiting = s.execute(
        select(opened, func.count())
        .where(
            _in(Case.opened_at, start, end),
            Case.status == CaseStatus.PENDING,
            or_(Case.urgent.is_(False), Case.urgent_deadline >= now),
        )
        .group_by(opened)
    ).all()
    for m, n in awaiting:
        t.add(m, "awaiting", n)
    decided = utc_month(Case.decided_at)
    outcome = {CaseStatus.APPROVED.value: "granted", CaseStatus.REFUSED.value: "refused"}
    for m, is_urgent, status, n in s.execute(
        select(decided, Case.urgent, Case.status, func.count())
        .where(_in(Case.decided_at, start, end))
        .group_by(decided, Case.urgent, Case.status)
    ).all():
        field = outcome.get(str(status))
        if field:
            t.add(m, field, n)
            if is_urgent:
                t.add(m, f"urgent_{field}", n)
    hours: dict[str, list[float]] = defaultdict(list)
    for opened_at, decided_at in s.execute(
        select(Case.opened_at, Case.decided_at).where(_in(Case.decided_at, start, end))
    ).all():
        if decided_at is None:  # excluded by the filter; for the type checker
            continue
        h = (decided_at - opened_at).total_seconds() / 3600
        hours[month_key(decided_at)].append(h)
        hours[TOTAL].append(h)
    # lapsed: an urgent window that ended in the period with no decision (purged or due to be)
    deadline = utc_month(Case.urgent_deadline)
    for m, n in s.execute(
        select(deadline, func.count())
        .where(
            Case.urgent.is_(True),
            Case.decided_at.is_(None),
            _in(Case.urgent_deadline, start, end),
            Case.urgent_deadline < now,
        )
        .group_by(deadline)
    ).all():
        t.add(m, "urgent_lapsed", n)
    purged = utc_month(Case.purged_at)
    for m, n in s.execute(
        select(purged, func.count())
        .where(Case.urgent.is_(True), _in(Case.purged_at, start, end))
        .group_by(purged)
    ).all():
        t.add(m, "urgent_purged", n)
    # searches under an urgent case before an authoriser decided it
    for m, n in s.execute(
        select(utc_month(A.ts), func.count())
        .select_from(A)
        .join(Case, Case.reference == A.case_ref)
        .where(
            A.action == "search.run",
            _in(A.ts, start, end),
            Case.urgent.is_(True),
            or_(Case.decided_at.is_(None), A.ts < Case.decided_at),
        )
        .group_by(utc_month(A.ts))
    ).all():
        t.add(m, "urgent_searches", n)

    def authorisations(key: str) -> AuthorisationFigures:
        c = t.get(key)
        return AuthorisationFigures(
            requested=c["requested"],
            granted=c["granted"],
            refused=c["refused"],
            awaiting=c["awaiting"],
            median_hours_to_decision=round(statistics.median(hours[key]), 2)
            if hours.get(key)
            else None,
        )

    def urgent(key: str) -> UrgentFigures:
        c = t.get(key)
        return UrgentFigures(
            opened=c["urgent_opened"],
            granted=c["urgent_granted"],
            refused=c["urgent_refused"],
            lapsed=c["urgent_lapsed"],
            purged=c["urgent_purged"],
            searches_before_authorisation=c["urgent_searches"],
        )

    return {"authorisations": authorisations, "urgent": urgent}


# -- reviews


def _previous(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The value on the decision recorded just before, on the same search."""
    return func.lag(column).over(partition_by=A.object_id, order_by=A.seq)


def _reviews(s: Session, start: datetime, end: datetime) -> Callable[[str], ReviewFigures]:
    """Outcomes and agreement, rebuilt from the ``review.decide`` records of the period.

    A second blind decision is compared with the decision recorded just before it on the same
    search (``LAG`` over the search's decisions in log order), exactly as the review service
    compared them when it was made; if that one is not a first decision (a SQLite search id
    reused after its record was deleted), the pair is not counted. The database pairs and counts
    them (a few rows per month reach Python, however many decisions there were).
    """
    t = _Tally()
    index = {d: i for i, d in enumerate(DECISIONS)}
    matrix: dict[str, list[list[int]]] = defaultdict(
        lambda: [[0] * len(DECISIONS) for _ in DECISIONS]
    )
    stage = A.details["stage"].as_string()
    decision = A.details["decision"].as_string()
    rank = A.details["rank"].as_integer()
    decided = (
        select(
            A.ts.label("ts"),
            stage.label("stage"),
            decision.label("decision"),
            rank.label("rank"),
            _previous(stage).label("prev_stage"),
            _previous(decision).label("prev_decision"),
            _previous(rank).label("prev_rank"),
        )
        .where(A.action == "review.decide", A.ts < end)
        .subquery()
    )
    month = utc_month(decided.c.ts)
    same_rank = case((decided.c.rank == decided.c.prev_rank, 1), else_=0)
    rows = s.execute(
        select(
            month,
            decided.c.stage,
            decided.c.decision,
            decided.c.prev_stage,
            decided.c.prev_decision,
            same_rank,
            func.count(),
        )
        .where(decided.c.ts >= start)
        .group_by(
            month,
            decided.c.stage,
            decided.c.decision,
            decided.c.prev_stage,
            decided.c.prev_decision,
            same_rank,
        )
    ).all()
    for m, stage_, decision_, prev_stage, prev_decision, ranks_agree, n in rows:
        t.add(m, "decisions", n)
        if stage_ == "tiebreak":
            t.add(m, "tiebreaks", n)
            t.add(m, f"outcome:{decision_}", n)
        elif stage_ == "second":
            if prev_stage != "first":
                continue  # no first decision to compare with: not counted as a pair
            t.add(m, "pairs", n)
            # as governance.review: a possible match agrees only on the same candidate
            if decision_ == prev_decision and (decision_ != "possible match" or ranks_agree):
                t.add(m, "agreed", n)
                t.add(m, f"outcome:{decision_}", n)
            else:
                t.add(m, "disputed", n)
            if decision_ in index and prev_decision in index:
                for key in (m, TOTAL):
                    matrix[key][index[prev_decision]][index[decision_]] += n

    def build(key: str) -> ReviewFigures:
        c = t.get(key)
        return ReviewFigures(
            decisions=c["decisions"],
            pairs=c["pairs"],
            agreed=c["agreed"],
            disputed=c["disputed"],
            tiebreaks=c["tiebreaks"],
            outcomes={d: c[f"outcome:{d}"] for d in DECISIONS},
            decisions_order=list(DECISIONS),
            agreement_matrix=[row[:] for row in matrix[key]],
        )

    return build


def _earlier(
    s: Session, action: str, object_ids: Sequence[str | None], before: datetime
) -> dict[str, list[datetime]]:
    """When ``action`` was recorded on these objects before ``before``, by object id."""
    found: dict[str, list[datetime]] = defaultdict(list)
    ids = sorted({o for o in object_ids if o is not None})
    for chunk in _chunks(ids, _CHUNK):
        for object_id, ts in s.execute(
            select(A.object_id, A.ts).where(
                A.action == action, A.object_id.in_(chunk), A.ts < before
            )
        ).all():
            if object_id is not None:
                found[object_id].append(ts)
    return found


def _latest_before(times: Iterable[datetime], ts: datetime) -> datetime | None:
    earlier = [t for t in times if t <= ts]
    return max(earlier) if earlier else None


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- probe quality


def reason_category(reason: str) -> str:
    """``"blurred: sharpness 12 (minimum 30)"`` -> ``"blurred"``: the words, not the measure."""
    return reason.split(":", 1)[0].strip() or "unspecified"


def _quality(
    s: Session, start: datetime, end: datetime, counts: _Tally
) -> Callable[[str], ProbeQualityFigures]:
    t = _Tally()
    month = utc_month(A.ts)
    faces = A.details["faces"].as_integer()
    for m, total, none in s.execute(
        select(month, func.sum(faces), func.count().filter(faces == 0))
        .where(A.action == "probe.add", _in(A.ts, start, end))
        .group_by(month)
    ).all():
        t.add(m, "faces", int(total or 0))
        t.add(m, "without_face", int(none or 0))
    uploaded = utc_month(Probe.created_at)
    acceptable = ProbeFace.quality["acceptable"].as_boolean()
    for m, ok, n in s.execute(
        select(uploaded, acceptable, func.count())
        .select_from(ProbeFace)
        .join(Probe, Probe.id == ProbeFace.probe_id)
        .where(_in(Probe.created_at, start, end), acceptable.is_not(None))
        .group_by(uploaded, acceptable)
    ).all():
        t.add(m, "acceptable" if ok else "poor", n)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for created_at, quality in s.execute(
        select(Probe.created_at, ProbeFace.quality)
        .join(Probe, Probe.id == ProbeFace.probe_id)
        .where(_in(Probe.created_at, start, end), acceptable.is_(False))
    ).all():
        for reason in (quality or {}).get("reasons") or ():
            for key in (month_key(created_at), TOTAL):
                reasons[key][reason_category(str(reason))] += 1
    ran = utc_month(SearchRecord.started_at)
    searched_ok = SearchRecord.probe_quality["acceptable"].as_boolean()
    for m, ok, n in s.execute(
        select(ran, searched_ok, func.count())
        .where(_in(SearchRecord.started_at, start, end), searched_ok.is_not(None))
        .group_by(ran, searched_ok)
    ).all():
        t.add(m, "searches_assessed", n)
        if not ok:
            t.add(m, "searches_poor", n)

    def build(key: str) -> ProbeQualityFigures:
        c = t.get(key)
        return ProbeQualityFigures(
            probes=counts.get(key)["probe.add"],
            faces=c["faces"],
            probes_without_face=c["without_face"],
            faces_assessed=c["acceptable"] + c["poor"],
            acceptable=c["acceptable"],
            poor=c["poor"],
            poor_reasons=dict(sorted(reasons.get(key, Counter()).items())),
            searches_assessed=c["searches_assessed"],
            searches_with_poor_probe=c["searches_poor"],
        )

    return build


# -- deletions


def _deletions(
    s: Session, start: datetime, end: datetime, policy: GovernancePolicy
) -> Callable[[str], DeletionFigures]:
    t = _Tally()
    rows = s.execute(
        select(A.action, A.ts, A.justification, A.details)
        .where(
            _in(A.ts, start, end),
            A.action.in_(
                (
                    "retention.probe_delete",
                    "retention.search_delete",
                    "retention.subject_erase",
                    "case.purge",
                    "gallery.erase",
                )
            ),
        )
        .order_by(A.seq)
    ).all()
    # A deletion record lists when each item fell due (``due``, beside ``ids``); one written
    # before it did is dated from the upload or search it deleted, looked up in the log.
    deleted_ids: dict[str, list[str]] = {"probe.add": [], "search.run": []}
    sources = {"retention.probe_delete": "probe.add", "retention.search_delete": "search.run"}
    for action, _, _, details in rows:
        if action in sources and _due_list(details or {}) is None:
            deleted_ids[sources[action]] += [str(i) for i in (details or {}).get("ids") or ()]
    created = {a: _earlier(s, a, ids, end) for a, ids in deleted_ids.items() if ids}
    periods = {"probe.add": policy.probe_retention, "search.run": policy.search_record_retention}
    fields = {"probe.add": "probes", "search.run": "search_records"}
    for action, ts, why, details in rows:
        details = details or {}
        m = month_key(ts)
        if action in sources:
            source = sources[action]
            dues = _due_list(details)
            for n, i in enumerate(details.get("ids") or ()):
                t.add(m, fields[source])
                if dues is not None:
                    due = dues[n]
                else:
                    made = _latest_before(created.get(source, {}).get(str(i), []), ts)
                    due = None if made is None else made + periods[source]
                if due is None:
                    t.add(m, "due_unknown")
                elif ts - due > DELETION_GRACE:
                    t.add(m, f"{fields[source]}_late")
        elif action == "retention.subject_erase":
            t.add(m, "subjects")
            due = _parse_time(details.get("due"))
            if due is None:
                t.add(m, "due_unknown")
            elif ts - due > DELETION_GRACE:
                t.add(m, "subjects_late")
        elif action == "case.purge":
            t.add(m, "probes_purged", _int(details.get("probes")))
            t.add(m, "search_records_purged", _int(details.get("searches")))
            if why != LAPSED_REASON:
                t.add(m, "purged_on_refusal")
        else:  # gallery.erase: an admin's decision, not a period ending
            t.add(m, "erased")
    # lapsed urgent cases: the row keeps both the deadline and when the material went
    for purged_at, deadline in s.execute(
        select(Case.purged_at, Case.urgent_deadline).where(
            _in(Case.purged_at, start, end),
            Case.status == CaseStatus.EXPIRED,
        )
    ).all():
        if purged_at is None:  # excluded by the filter; for the type checker
            continue
        m = month_key(purged_at)
        t.add(m, "urgent_cases")
        if deadline is None:
            t.add(m, "due_unknown")
        elif purged_at - deadline > DELETION_GRACE:
            t.add(m, "urgent_cases_late")

    def build(key: str) -> DeletionFigures:
        c = t.get(key)
        return DeletionFigures(
            probes=c["probes"],
            probes_late=c["probes_late"],
            search_records=c["search_records"],
            search_records_late=c["search_records_late"],
            subjects=c["subjects"],
            subjects_late=c["subjects_late"],
            urgent_cases=c["urgent_cases"],
            urgent_cases_late=c["urgent_cases_late"],
            due_unknown=c["due_unknown"],
            purged_on_refusal=c["purged_on_refusal"],
            probes_purged=c["probes_purged"],
            search_records_purged=c["search_records_purged"],
            erased_on_decision=c["erased"],
        )

    return build


def _overdue(s: Session, now: datetime, policy: GovernancePolicy) -> OverdueFigures:
    def count(*where: ColumnElement[bool], table: Any) -> int:
        return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    return OverdueFigures(
        probes=count(Probe.created_at < now - policy.probe_retention - DELETION_GRACE, table=Probe),
        search_records=count(
            SearchRecord.started_at < now - policy.search_record_retention - DELETION_GRACE,
            table=SearchRecord,
        ),
        subjects=count(
            Subject.retention_until.is_not(None),
            Subject.retention_until < now - DELETION_GRACE,
            table=Subject,
        ),
        urgent_cases=count(
            Case.status == CaseStatus.PENDING,
            Case.urgent.is_(True),
            Case.urgent_deadline < now - DELETION_GRACE,
            table=Case,
        ),
    )


def _due_list(details: Mapping[str, Any]) -> list[datetime | None] | None:
    """The due times a deletion record gives, one per id; None if it gives none (older ones)."""
    dues, ids = details.get("due"), details.get("ids")
    if not isinstance(dues, list) or not isinstance(ids, list) or len(dues) != len(ids):
        return None
    return [_parse_time(d) for d in dues]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
