"""Transparency reports and DPIA facts, computed from the live database.

An oversight body should not have to trust a hand-written summary: both reports are derived from
the same tables and audit log the system runs on, so their numbers can be re-derived by anyone with
read access. Where the two disagree, the audit log is the complete history (it is never trimmed),
while search records, probes and reviews are deleted on refusal and at the end of retention; the
transparency report therefore counts searches both ways and says so.

The functions return plain JSON-ready dicts (timestamps as ISO 8601 text) so that ``--json``,
HTML and tests all see exactly the same numbers. Access control and the audit record of each
report are :class:`retroface.governance.oversight.OversightService`'s job, which the CLI and the
API call; these functions only compute.
"""

from __future__ import annotations

import base64
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jinja2
import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

# pydantic (the API's response model) reads TypedDicts only from typing_extensions before 3.12
from typing_extensions import TypedDict

from retroface import __version__
from retroface.core.errors import InvalidInputError
from retroface.core.labels import LEAD_LABEL
from retroface.core.roles import ROLE_DESCRIPTIONS, Role, parse_roles
from retroface.core.status import CaseStatus, ReviewStatus
from retroface.core.text import check_period
from retroface.gallery.service import gallery_stats
from retroface.governance.review import DECISIONS
from retroface.governance.thresholds import OperatingThreshold, operating_threshold
from retroface.storage.tables import (
    AuditCheckpoint,
    AuditRecord,
    Candidate,
    Case,
    FaceTemplate,
    Probe,
    ProbeFace,
    ReferenceImage,
    Review,
    SearchRecord,
    Subject,
    ThresholdRecord,
    User,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from retroface.audit.chain import VerifyResult
    from retroface.audit.log import AuditLog
    from retroface.config import Settings
    from retroface.gallery.service import GalleryService
    from retroface.governance.policy import GovernancePolicy
    from retroface.storage.db import Database
    from retroface.vision.types import FaceEngine

#: Printed on both reports: the system produces leads for human review, never identifications.
LEADS_NOTICE = (
    "Every search result is an investigative lead, not an identification: a ranked list of "
    "possible candidates that must be checked by other means before anyone acts on it. The "
    "system puts each candidate list before two reviewers, neither of whom ran the search, who "
    f"decide independently; each result is labelled '{LEAD_LABEL}'."
)
DELETION_ACTIONS = ("case.purge", "gallery.erase")
DELETION_PREFIX = "retention."
REVIEW_STATUSES = (
    ReviewStatus.PENDING,
    ReviewStatus.IN_REVIEW,
    ReviewStatus.AGREED,
    ReviewStatus.DISPUTED,
    ReviewStatus.RESOLVED,
    ReviewStatus.NO_CANDIDATES,
)
NO_CASE = "(no case recorded)"


class ReportSource(Protocol):
    """What the transparency report reads; ``OversightService`` (and the app context) provide it."""

    @property
    def db(self) -> Database: ...
    @property
    def gallery(self) -> GalleryService: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


class DpiaSource(ReportSource, Protocol):
    """The DPIA also describes the policy, the model and the audit safeguards in force."""

    @property
    def settings(self) -> Settings: ...
    @property
    def policy(self) -> GovernancePolicy: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def engine(self) -> FaceEngine: ...


class TransparencyReport(TypedDict):
    """The shape :func:`transparency` returns; each section is a JSON-ready dict."""

    report: str
    period: dict[str, str]
    generated_at: str
    notice: str
    searches: dict[str, Any]
    authorisations: dict[str, Any]
    reviews: dict[str, Any]
    #: Operating-threshold changes recorded in the period, with the rule that chose each and
    #: any fairness-gate override (issue #17): a published override is the point of allowing it.
    threshold_changes: list[dict[str, Any]]
    deletions: dict[str, Any]
    gallery: dict[str, Any]


class DpiaReport(TypedDict):
    """The shape :func:`dpia` returns."""

    report: str
    generated_at: str
    notice: str
    data_categories: list[dict[str, Any]]
    gallery: dict[str, Any]
    retention: dict[str, Any]
    roles: list[dict[str, Any]]
    users: dict[str, int]
    model: dict[str, Any]
    thresholds: dict[str, Any]
    safeguards: list[dict[str, Any]]


# ---------------------------------------------------------------------- transparency


def transparency(app: ReportSource, start: datetime, end: datetime) -> TransparencyReport:
    """Activity in ``[start, end)`` (UTC): searches, authorisations, reviews and deletions.

    Searches, reviews and their outcomes are attributed to the period by when the search ran;
    authorisation decisions by when they were made; urgent-route cases by when they were opened;
    deletions by the time of their audit record. The gallery figures are as at generation time.
    """
    _check_period(start, end)
    with app.db.session() as s:
        searches = _searches(s, start, end)
        authorisations = _authorisations(s, start, end)
        reviews = _reviews(s, start, end)
        deletions = _deletions(s, start, end)
        threshold_changes = [
            _threshold_row(t)
            for t in s.scalars(
                select(ThresholdRecord)
                .where(ThresholdRecord.created_at >= start, ThresholdRecord.created_at < end)
                .order_by(ThresholdRecord.id)
            )
        ]
    return {
        "report": "transparency",
        "period": {
            "start": _iso(start),
            "end": _iso(end),
            "end_is": "exclusive",
        },
        "generated_at": _iso(app.clock()),
        "notice": LEADS_NOTICE,
        "searches": searches,
        "authorisations": authorisations,
        "reviews": reviews,
        "deletions": deletions,
        "threshold_changes": threshold_changes,
        "gallery": gallery_stats(app.db).model_dump(mode="json"),
    }


def _threshold_row(t: ThresholdRecord) -> dict[str, Any]:
    """A threshold record as the reports publish it, with its rule and fairness-gate outcome."""
    evaluation = t.evaluation or {}
    fairness = evaluation.get("fairness") or {}
    override = fairness.get("override") or None
    return {
        "record_id": t.id,
        "model": t.model_key,
        "threshold": t.threshold,
        "target_fpir": t.target_fpir,
        "achieved_fpir": t.achieved_fpir,
        "fnir": t.fnir,
        "dataset": t.dataset,
        "dataset_sha256": t.dataset_hash,
        "mated_searches": t.n_mated,
        "non_mated_searches": t.n_nonmated,
        "date": _iso(t.created_at),
        "by": t.created_by,
        "active": t.active,
        "rule": (evaluation.get("rule") or {}).get("rule", "overall"),
        "fairness_checked": bool(fairness.get("checked")),
        "fairness_breaches": fairness.get("breaches") or [],
        "fairness_override": override,
    }


def _check_period(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInputError("report periods need timezone-aware datetimes (UTC)")
    check_period(start, end)
    if start >= end:
        raise InvalidInputError("the report period must end after it starts")


def _searches(s: Session, start: datetime, end: datetime) -> dict[str, Any]:
    """Searches run (from the audit log) and search records still held, by offence and week."""
    categories = dict(s.execute(select(Case.reference, Case.offence_category)).all())
    run = s.execute(
        select(AuditRecord.case_ref, AuditRecord.ts).where(
            AuditRecord.action == "search.run", AuditRecord.ts >= start, AuditRecord.ts < end
        )
    ).all()
    held = s.execute(
        select(Case.offence_category, SearchRecord.started_at)
        .select_from(SearchRecord)
        .outerjoin(Case, SearchRecord.case_id == Case.id)
        .where(SearchRecord.started_at >= start, SearchRecord.started_at < end)
    ).all()
    run_by_cat = Counter(categories.get(ref, NO_CASE) if ref else NO_CASE for ref, _ in run)
    held_by_cat = Counter(cat or NO_CASE for cat, _ in held)
    by_category = {
        cat: {"run": run_by_cat.get(cat, 0), "records_held": held_by_cat.get(cat, 0)}
        for cat in sorted(set(run_by_cat) | set(held_by_cat))
    }
    run_weeks = Counter(_week_start(ts) for _, ts in run)
    held_weeks = Counter(_week_start(ts) for _, ts in held)
    per_week = [
        {
            "week": f"{week.isocalendar().year}-W{week.isocalendar().week:02d}",
            "week_start": week.isoformat(),
            "run": run_weeks.get(week, 0),
            "records_held": held_weeks.get(week, 0),
        }
        for week in _weeks(start, end)
    ]
    return {
        "run": len(run),
        "records_held": len(held),
        "records_deleted": max(0, len(run) - len(held)),
        "by_offence_category": by_category,
        "per_week": per_week,
    }


def _week_start(ts: datetime) -> date:
    day = ts.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def _weeks(start: datetime, end: datetime) -> list[date]:
    """Monday of every ISO week that overlaps ``[start, end)``, so empty weeks show as zero."""
    week = _week_start(start)
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    weeks = []
    while week <= last:
        weeks.append(week)
        week += timedelta(days=7)
    return weeks


def _authorisations(s: Session, start: datetime, end: datetime) -> dict[str, Any]:
    decided = s.execute(
        select(Case.status, Case.urgent).where(Case.decided_at >= start, Case.decided_at < end)
    ).all()
    opened = s.execute(
        select(Case.status, Case.urgent).where(Case.opened_at >= start, Case.opened_at < end)
    ).all()
    urgent = Counter(status for status, is_urgent in opened if is_urgent)
    return {
        "requested": len(opened),
        "decided": len(decided),
        "granted": sum(status == CaseStatus.APPROVED for status, _ in decided),
        "refused": sum(status == CaseStatus.REFUSED for status, _ in decided),
        "granted_urgent": sum(status == CaseStatus.APPROVED and u for status, u in decided),
        "refused_urgent": sum(status == CaseStatus.REFUSED and u for status, u in decided),
        "awaiting_decision": sum(status == CaseStatus.PENDING for status, _ in opened),
        "urgent": {
            "opened": sum(urgent.values()),
            "authorised": urgent.get(CaseStatus.APPROVED, 0),
            "refused": urgent.get(CaseStatus.REFUSED, 0),
            "expired": urgent.get(CaseStatus.EXPIRED, 0),
            "refused_or_expired": urgent.get(CaseStatus.REFUSED, 0)
            + urgent.get(CaseStatus.EXPIRED, 0),
            "awaiting_decision": urgent.get(CaseStatus.PENDING, 0),
        },
    }


def _reviews(s: Session, start: datetime, end: datetime) -> dict[str, Any]:
    records = s.execute(
        select(SearchRecord.id, SearchRecord.review_status, SearchRecord.review_outcome).where(
            SearchRecord.started_at >= start, SearchRecord.started_at < end
        )
    ).all()
    status = Counter(st for _, st, _ in records)
    detail = Counter(out for _, _, out in records if out)
    outcomes = Counter(_outcome_category(out) for out in detail.elements())
    pairs: dict[int, dict[str, str]] = {}
    ids = [rid for rid, _, _ in records]
    for chunk in _chunks(ids, 500):
        for search_id, stage, decision in s.execute(
            select(Review.search_id, Review.stage, Review.decision).where(
                Review.search_id.in_(chunk), Review.stage.in_(("first", "second"))
            )
        ).all():
            pairs.setdefault(search_id, {})[stage] = decision
    first_second = [(p["first"], p["second"]) for _, p in sorted(pairs.items()) if len(p) == 2]
    return {
        "searches": len(records),
        "by_status": {st.value: status.get(st, 0) for st in REVIEW_STATUSES},
        "agreed": status.get(ReviewStatus.AGREED, 0),
        "disputed": status.get(ReviewStatus.DISPUTED, 0),
        "resolved": status.get(ReviewStatus.RESOLVED, 0),
        "outcomes": {d: outcomes.get(d, 0) for d in DECISIONS},
        "outcomes_detail": dict(sorted(detail.items())),
        "agreement": cohen_kappa(first_second),
    }


def _outcome_category(outcome: str) -> str:
    return "possible match" if outcome.startswith("possible match") else outcome


def cohen_kappa(
    pairs: Sequence[tuple[str, str]], categories: Sequence[str] = DECISIONS
) -> dict[str, Any]:
    """Cohen's kappa between first and second reviewers: agreement beyond what chance predicts.

    ``kappa = (p_o - p_e) / (1 - p_e)``, with ``p_o`` the share of searches where both gave the
    same decision and ``p_e = sum_k p1(k) * p2(k)`` from each reviewer's own decision rates.
    Only the decision category counts here (not the candidate rank), so two "possible match"
    decisions naming different ranks agree for kappa but are a dispute in the workflow.
    ``kappa`` is None with fewer than 2 pairs, or when chance agreement is 1 (both reviewers
    always gave one and the same decision), where the statistic is undefined.
    """
    index = {c: i for i, c in enumerate(categories)}
    matrix = np.zeros((len(categories), len(categories)), dtype=np.int64)
    for a, b in pairs:
        matrix[index[a], index[b]] += 1
    n = int(matrix.sum())
    out: dict[str, Any] = {
        "kappa": None,
        "n": n,
        "observed_agreement": None,
        "expected_agreement": None,
        "categories": list(categories),
        "matrix": matrix.tolist(),
    }
    if n == 0:
        return out
    p_o = float(np.trace(matrix)) / n
    p_e = float((matrix.sum(axis=1) / n) @ (matrix.sum(axis=0) / n))
    out["observed_agreement"] = p_o
    out["expected_agreement"] = p_e
    if n >= 2 and not math.isclose(p_e, 1.0):
        out["kappa"] = (p_o - p_e) / (1.0 - p_e)
    return out


def _deletions(s: Session, start: datetime, end: datetime) -> dict[str, Any]:
    rows = s.execute(
        select(AuditRecord.action, AuditRecord.justification, AuditRecord.details).where(
            AuditRecord.ts >= start,
            AuditRecord.ts < end,
            or_(
                AuditRecord.action.in_(DELETION_ACTIONS),
                AuditRecord.action.startswith(DELETION_PREFIX),
            ),
        )
    ).all()
    events: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for action, why, details in rows:
        details = details or {}
        events[action] += 1
        if action == "case.purge":
            reasons[why or "not recorded"] += 1
            totals["probes_deleted"] += _int(details.get("probes"))
            totals["search_records_deleted"] += _int(details.get("searches"))
        elif action == "retention.probe_delete":
            totals["probes_deleted"] += _int(details.get("count"))
        elif action == "retention.search_delete":
            totals["search_records_deleted"] += _int(details.get("count"))
        elif action in ("retention.subject_erase", "gallery.erase"):
            totals["subjects_erased"] += 1
            totals["reference_images_erased"] += _int(details.get("images"))
            totals["templates_erased"] += _int(details.get("templates"))
    return {
        "events": sum(events.values()),
        "events_by_action": dict(sorted(events.items())),
        "cases_purged": events.get("case.purge", 0),
        "case_purge_reasons": dict(sorted(reasons.items())),
        "probes_deleted": totals["probes_deleted"],
        "search_records_deleted": totals["search_records_deleted"],
        "subjects_erased": totals["subjects_erased"],
        "reference_images_erased": totals["reference_images_erased"],
        "templates_erased": totals["templates_erased"],
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------- DPIA


def dpia(app: DpiaSource) -> DpiaReport:
    """The facts a Data Protection Impact Assessment must describe, as the system holds them now.

    Counts, policy values, model identity and safeguards are read from the running system, so
    the DPIA can be regenerated whenever any of them changes rather than drifting from reality.
    """
    policy = app.policy
    verify = app.audit.verify()
    with app.db.session() as s:
        counts = {
            table: s.scalar(select(func.count()).select_from(table)) or 0
            for table in (
                Subject,
                ReferenceImage,
                FaceTemplate,
                Probe,
                ProbeFace,
                Case,
                SearchRecord,
                Candidate,
                Review,
                AuditRecord,
                AuditCheckpoint,
            )
        }
        no_retention_date = (
            s.scalar(select(func.count(Subject.id)).where(Subject.retention_until.is_(None))) or 0
        )
        users = s.execute(select(User.roles, User.active)).all()
        thresholds = [
            _threshold_row(t)
            for t in s.scalars(select(ThresholdRecord).order_by(ThresholdRecord.id))
        ]
        live = operating_threshold(s, app.engine.identity.key)
    active_roles: Counter[Role] = Counter()
    for roles, active in users:
        if active:
            active_roles.update(parse_roles(roles))
    return {
        "report": "dpia",
        "generated_at": _iso(app.clock()),
        "notice": LEADS_NOTICE,
        "data_categories": _data_categories(counts, no_retention_date, policy),
        "gallery": gallery_stats(app.db).model_dump(mode="json"),
        "retention": policy.to_dict(),
        "roles": [
            {"role": r.value, "duties": ROLE_DESCRIPTIONS[r], "active_users": active_roles[r]}
            for r in Role
        ],
        "users": {
            "active": sum(1 for _, active in users if active),
            "disabled": sum(1 for _, active in users if not active),
        },
        "model": app.engine.identity.to_dict(),
        "thresholds": {
            "operating": _operating(live),
            "records": thresholds,
            "note": None
            if thresholds
            else (
                "No calibration has been recorded on this system's own data: searches run at "
                "the operating threshold shipped with the model (above), calibrated on public "
                "data. Each search record stores the threshold it used."
            ),
        },
        "safeguards": _safeguards(app, policy, verify),
    }


def _operating(live: OperatingThreshold | None) -> dict[str, Any] | None:
    """The live model's operating threshold and the per-group figures of the evaluation it came
    from, exactly as that run stored them (not recomputed: the DPIA shows what was measured)."""
    if live is None:
        return None
    evaluation = live.evaluation
    groups = {
        column: {
            "groups": list(demo["result"]["groups"].values()),
            "fnir_ratio": demo["result"]["fnir_ratio"],
            "fnir_highest": demo["result"]["fnir_highest"],
            "fnir_lowest": demo["result"]["fnir_lowest"],
            "fpir_ratio": demo["result"]["fpir_ratio"],
            "fpir_highest": demo["result"]["fpir_highest"],
            "fpir_lowest": demo["result"]["fpir_lowest"],
            "confidence": demo["result"].get("confidence"),
            "summary": demo["summary"],
        }
        for column, demo in (evaluation.get("demographics") or {}).items()
    }
    return {
        "model": live.model_key,
        "threshold": live.value,
        "source": live.source,
        "target_fpir": live.target_fpir,
        "achieved_fpir": live.achieved_fpir,
        "fnir": live.fnir,
        "dataset": live.dataset,
        "dataset_sha256": live.dataset_hash,
        "mated_searches": live.n_mated,
        "non_mated_searches": live.n_nonmated,
        "date": live.produced,
        "record_id": live.record_id,
        "command": live.command,
        "points": evaluation.get("points") or {},
        "demographics": groups,
        "note": None
        if groups
        else "No per-group figures were measured with this threshold (calibrate it with "
        "--attributes).",
    }


def _data_categories(
    counts: Mapping[Any, int], no_retention_date: int, policy: GovernancePolicy
) -> list[dict[str, Any]]:
    probe_days = f"{policy.probe_retention_days:g} days from upload"
    search_days = f"{policy.search_record_retention_days:g} days from the search"
    gallery = (
        "until the subject's retention date, if one is set "
        f"({no_retention_date} subject(s) have none and stay until erased)"
    )
    refused = (
        "; deleted at once if the case's authorisation is refused, and at the next retention run "
        "if an urgent case's window lapses undecided"
    )
    rows = [
        (
            Subject,
            "Gallery subjects",
            "reference, name, inclusion reason, legal basis, source",
            "database",
            gallery,
        ),
        (
            ReferenceImage,
            "Reference images",
            "custody or other reference photographs",
            "encrypted file store (AES-256-GCM)",
            gallery,
        ),
        (
            FaceTemplate,
            "Face templates",
            "biometric embeddings of reference images",
            "database and search index, encrypted (AES-256-GCM)",
            gallery,
        ),
        (
            Probe,
            "Probe images",
            "images searched for a case, with their provenance",
            "encrypted file store (AES-256-GCM)",
            probe_days + refused,
        ),
        (
            ProbeFace,
            "Probe faces",
            "biometric embeddings of faces found in probe images",
            "database, encrypted (AES-256-GCM)",
            probe_days + refused,
        ),
        (
            Case,
            "Cases",
            "offence category, purpose, justification and authorisation decision",
            "database",
            "kept (not deleted by the software) so every search stays attributable",
        ),
        (
            SearchRecord,
            "Search records",
            "who searched, when, case, gallery version, model, probe hash and provenance",
            "database",
            search_days + refused,
        ),
        (
            Candidate,
            "Candidate list entries",
            "ranked subjects and similarity per search",
            "database",
            "with their search record",
        ),
        (
            Review,
            "Reviews",
            "reviewer decisions and notes per search",
            "database",
            "with their search record",
        ),
        (
            AuditRecord,
            "Audit records",
            "every action: who, what, when, case, justification",
            "database, hash-chained",
            f"at least {policy.audit_retention_days:g} days by policy; never deleted by the "
            "software (deleting would break the chain); export before archiving",
        ),
        (
            AuditCheckpoint,
            "Audit checkpoints",
            "Ed25519 signatures over the audit chain head",
            "database",
            "with the audit records",
        ),
    ]
    return [
        {
            "category": name,
            "contents": contents,
            "count": counts[table],
            "stored": stored,
            "retention": retention,
        }
        for table, name, contents, stored, retention in rows
    ]


def _safeguards(
    app: DpiaSource, policy: GovernancePolicy, verify: VerifyResult
) -> list[dict[str, Any]]:
    keys = app.settings.home / "keys"
    data_key = (
        "from the RETROFACE_DATA_KEY environment variable"
        if os.environ.get("RETROFACE_DATA_KEY")
        else f"key file {keys / 'data.key'} (mode 0600)"
    )
    every = app.settings.audit_checkpoint_every
    return [
        {
            "safeguard": "Encryption at rest",
            "enabled": True,
            "detail": "AES-256-GCM for reference and probe images, face templates and the search "
            f"index; data key {data_key}",
        },
        {
            "safeguard": "Tamper-evident audit log",
            "enabled": True,
            "detail": "each record is sha256 hash-chained to the one before; the chain head is "
            "signed with Ed25519 "
            + (f"every {every} records" if every else "on export (automatic signing is off)")
            + f"; signing key {app.audit.signing_key_path} (key id {app.audit.key_id})",
        },
        {
            "safeguard": "Audit log verified now",
            "enabled": bool(verify.ok),
            "detail": _verify_text(verify),
            "verify": {
                "ok": verify.ok,
                "checked": verify.checked,
                "checkpoints_verified": verify.checkpoints_verified,
                "signed_through": verify.signed_through,
                "first_bad_seq": verify.first_bad_seq,
                "problem": verify.problem,
                "head_hash": verify.head_hash,
            },
        },
        {
            "safeguard": "Authorisation required before any search",
            "enabled": True,
            "detail": "every search runs under a case for one configured offence category, "
            "approved by an authoriser (or, on the urgent route, within its window); approvals "
            f"last {policy.authorisation_days:g} days unless the authoriser sets another period",
        },
        {
            "safeguard": "Urgent route with a deadline",
            "enabled": True,
            "detail": "an urgent case may search before approval for "
            f"{policy.urgent_window_hours:g} hours; no search runs after that without approval; "
            "if refused, its probes and searches are deleted at once, and if the window lapses "
            "undecided, at the next retention run",
            "urgent_window_hours": policy.urgent_window_hours,
        },
        {
            "safeguard": "Two-person blind review",
            "enabled": True,
            "detail": "two reviewers, neither the person who ran the search, decide each "
            "candidate list without seeing the other's decision; a disagreement goes to a third",
        },
        {
            "safeguard": "Separation of duties",
            "enabled": True,
            "detail": "no role implies another; the person who opened a case cannot authorise it "
            "and the person who ran a search cannot review it",
        },
        {
            "safeguard": "Results labelled as investigative leads",
            "enabled": True,
            "detail": LEAD_LABEL,
        },
        {
            "safeguard": "Offence categories configured",
            "enabled": bool(policy.offence_categories),
            "detail": ", ".join(policy.offence_categories),
        },
    ]


def _verify_text(verify: VerifyResult) -> str:
    if not verify.ok:
        return f"FAILED from record {verify.first_bad_seq}: {verify.problem}"
    text = (
        f"intact: {verify.checked} records chained, {verify.checkpoints_verified} signed "
        f"checkpoint(s), signed through record {verify.signed_through}"
    )
    if verify.signed_through < verify.checked:
        text += (
            f"; records after {verify.signed_through} are chained but not yet signed (the next "
            "checkpoint or audit export signs them)"
        )
    return text


# ---------------------------------------------------------------------- helpers


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


# ---------------------------------------------------------------------- HTML


def _environment() -> jinja2.Environment:
    def load(name: str) -> str:
        folder = resources.files("retroface.governance").joinpath("templates")
        return folder.joinpath(name).read_text("utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pct"] = _fmt_pct
    env.filters["yesno"] = lambda v: "yes" if v else "no"
    env.filters["g"] = lambda v: f"{float(v):g}"
    env.filters["when"] = _fmt_when
    return env


def _fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not available"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _fmt_when(value: str) -> str:
    """ISO timestamps as people read them; the reports state once that all times are UTC."""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_pct(value: Any) -> str:
    return "not available" if value is None else f"{100 * float(value):.1f}%"


def _png(fig: Figure) -> str:
    from retroface.eval.plots import figure_png

    return base64.b64encode(figure_png(fig)).decode("ascii")


def _bar_figure(
    panels: Sequence[tuple[str, Mapping[str, int]]],
    *,
    horizontal: bool = False,
    xlabel: str = "",
) -> Figure:
    """One bar chart per panel, with the count printed on each bar (no reading off axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = max((len(d) for _, d in panels), default=1)
    height = max(3.0, 0.45 * rows + 1.5) if horizontal else 3.8
    width = max(7.0 * len(panels) ** 0.5, 0.22 * rows)
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, data) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize="medium")
        labels, values = list(data), list(data.values())
        many = len(labels) > 12
        if not labels or not any(values):
            ax.text(
                0.5, 0.5, "none in this period", ha="center", va="center", transform=ax.transAxes
            )
            ax.set_axis_off()
            continue
        if horizontal:
            bars = ax.barh(labels, values, color="#4a7bd0")
            ax.invert_yaxis()
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(xlabel)
            ax.set_xlim(0, max(values) * 1.15 + 0.5)
        else:
            bars = ax.bar(labels, values, color="#4a7bd0")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(xlabel)
            ax.set_ylim(0, max(values) * 1.15 + 0.5)
            rotation = 90 if many else 30 if len(labels) > 3 else 0
            ax.tick_params(axis="x", labelrotation=rotation, labelsize="small" if many else None)
        if not many:  # dozens of weekly bars: the table beside the chart has the numbers
            ax.bar_label(bars, padding=2)
        ax.grid(True, axis="x" if horizontal else "y", alpha=0.3)
    return fig


def transparency_charts(report: TransparencyReport) -> list[dict[str, str]]:
    """The four transparency charts as ``{"title", "caption", "png_base64"}``."""
    searches, auth, reviews = report["searches"], report["authorisations"], report["reviews"]
    by_cat = searches["by_offence_category"]
    urgent, status = auth["urgent"], reviews["by_status"]
    charts = [
        (
            "Searches by offence category",
            "Searches run in the period, by the offence category of the authorised case "
            "(from the audit log, so searches later deleted are included).",
            _bar_figure(
                [("Searches run", {c: v["run"] for c, v in by_cat.items()})],
                horizontal=True,
                xlabel="searches",
            ),
        ),
        (
            "Authorisation outcomes",
            "Left: authorisation decisions made in the period. Right: cases opened through the "
            "urgent route in the period, by what has happened to them since.",
            _bar_figure(
                [
                    ("Decisions", {"granted": auth["granted"], "refused": auth["refused"]}),
                    (
                        "Urgent-route cases",
                        {
                            "authorised": urgent["authorised"],
                            "refused": urgent["refused"],
                            "expired": urgent["expired"],
                            "awaiting": urgent["awaiting_decision"],
                        },
                    ),
                ],
                xlabel="cases",
            ),
        ),
        (
            "Review outcomes",
            "Left: where the candidate lists of the period's searches stand in two-person "
            "review. Right: the settled outcomes.",
            _bar_figure(
                [
                    ("Review status", {k.replace("_", " "): v for k, v in status.items()}),
                    ("Settled outcomes", reviews["outcomes"]),
                ],
                xlabel="searches",
            ),
        ),
        (
            "Searches per week",
            "Searches run in each ISO week (Monday to Sunday, UTC) of the period.",
            _bar_figure(
                [("Searches run per week", {w["week"]: w["run"] for w in searches["per_week"]})],
                xlabel="searches",
            ),
        ),
    ]
    return [
        {"title": title, "caption": caption, "png_base64": _png(fig)}
        for title, caption, fig in charts
    ]


def render_transparency_html(report: TransparencyReport) -> str:
    """One self-contained HTML document: tables, plain-language labels and embedded charts."""
    return (
        _environment()
        .get_template("transparency.html.j2")
        .render(r=report, charts=transparency_charts(report), version=__version__)
    )


def render_dpia_html(report: DpiaReport) -> str:
    """The DPIA facts as one self-contained HTML document."""
    return _environment().get_template("dpia.html.j2").render(r=report, version=__version__)


def write_text(text: str, path: Path) -> Path:
    """Write a rendered report (UTF-8), creating the folder; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
