"""The operating threshold of a model: which calibration is in force, recorded and audited.

Every model the package ships has an operating threshold calibrated at FPIR 1% on public data
(``operating_thresholds.json`` beside this module, with the command, protocol hash, sample sizes
and date that produced it), so a search is never run "with no threshold" by default (issue #13).
A calibration recorded here (``retroface eval calibrate``, admin, audited) overrides the shipped
one for its model: it is measured on the force's own kind of images, which the shipped one is not.

Every later search records the operating threshold it ran against and where it came from, so
setting one changes how every candidate list is read: only an admin may, and each new record (or
refused attempt) is written to the audit log by this service, not by a front end.

The fairness gate (issue #17): a calibration whose stored evaluation shows a FNIR or FPIR ratio
between groups above the configured limits (``RETROFACE_FAIRNESS_MAX_FNIR_RATIO`` /
``..._FPIR_RATIO``) is refused, audited as ``threshold.calibrate.refused`` with the figures,
unless the admin gives a justification to override it; the override is stored with the record,
audited, and listed in the transparency and DPIA reports. It gates *changes*: the shipped record
is package data reviewed like code (and today exceeds the FNIR limit, see docs/fairness.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Literal, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import ConflictError
from retroface.core.roles import Role
from retroface.storage.db import Database
from retroface.storage.tables import ThresholdRecord

ACTION = "threshold.calibrate"
#: The pipeline settings that change scores, and so belong with the threshold they produced.
PIPELINE_KEYS = ("det_size", "flip")
#: The data file of shipped thresholds (package data beside this module).
SHIPPED_FILE = "operating_thresholds.json"

ThresholdSource = Literal["calibrated", "shipped"]


@dataclass(frozen=True)
class OperatingThreshold:
    """The threshold a model's candidate lists are read against, and where it came from.

    ``evaluation`` holds what the calibration measured besides the threshold (other FPIR
    points, per-group FNIR/FPIR with intervals): the DPIA report shows it as the live figures.
    """

    model_key: str
    value: float
    source: ThresholdSource
    target_fpir: float
    achieved_fpir: float
    fnir: float | None
    n_mated: int
    n_nonmated: int
    dataset: str
    dataset_hash: str
    produced: str  # ISO date (shipped) or time (calibrated) of the calibration
    record_id: int | None = None  # the ThresholdRecord, for a calibrated one
    command: str | None = None  # how a shipped one was produced
    evaluation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_key": self.model_key,
            "threshold": self.value,
            "source": self.source,
            "target_fpir": self.target_fpir,
            "achieved_fpir": self.achieved_fpir,
            "fnir": self.fnir,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "dataset": self.dataset,
            "dataset_hash": self.dataset_hash,
            "produced": self.produced,
            "record_id": self.record_id,
            "command": self.command,
            "evaluation": self.evaluation,
        }


def group_rates(evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per attribute, per group: FNIR and FPIR at the threshold (what the audit keeps of an
    evaluation; the record keeps the intervals and counts too)."""
    out: dict[str, Any] = {}
    for column, demo in ((evaluation or {}).get("demographics") or {}).items():
        groups = (demo.get("result") or {}).get("groups") or {}
        out[column] = {g: {"fnir": m.get("fnir"), "fpir": m.get("fpir")} for g, m in groups.items()}
    return out


def fairness_breaches(
    evaluation: Mapping[str, Any] | None, max_fnir_ratio: float, max_fpir_ratio: float
) -> list[dict[str, Any]]:
    """Each (attribute, rate) whose ratio between the highest and lowest group exceeds its limit.

    The ratios are those the evaluation stored (groups with too few searches, and identities
    with no label, already left out). A lowest rate of 0 under a positive highest one has no
    finite ratio and counts as a breach: one group bears every error of that kind.
    """
    out: list[dict[str, Any]] = []
    for column, demo in ((evaluation or {}).get("demographics") or {}).items():
        result = demo.get("result") or {}
        groups = result.get("groups") or {}
        for rate, limit in (("fnir", max_fnir_ratio), ("fpir", max_fpir_ratio)):
            ratio = result.get(f"{rate}_ratio")
            hi, lo = result.get(f"{rate}_highest"), result.get(f"{rate}_lowest")
            if ratio is None:
                if hi is None or not (groups.get(hi) or {}).get(rate):
                    continue
                ratio = float("inf")
            if ratio > limit:
                out.append(
                    {
                        "attribute": column,
                        "rate": rate,
                        "ratio": ratio if ratio != float("inf") else None,
                        "limit": limit,
                        "highest": hi,
                        "lowest": lo,
                        "highest_rate": (groups.get(hi) or {}).get(rate),
                        "lowest_rate": (groups.get(lo) or {}).get(rate),
                    }
                )
    return out


@cache
def shipped_thresholds() -> dict[str, dict[str, Any]]:
    """The shipped records, by model key (read once: it is package data, not configuration)."""
    text = resources.files("retroface.governance").joinpath(SHIPPED_FILE).read_text("utf-8")
    models: dict[str, dict[str, Any]] = json.loads(text)["models"]
    return models


def shipped_threshold(model_key: str) -> OperatingThreshold | None:
    """The shipped operating threshold of ``model_key``, or None for a model the package does not
    ship (custom weights in ``RETROFACE_MODELS_DIR``: calibrate them with ``eval calibrate``)."""
    rec = shipped_thresholds().get(model_key)
    if rec is None:
        return None
    return OperatingThreshold(
        model_key=model_key,
        value=float(rec["threshold"]),
        source="shipped",
        target_fpir=float(rec["target_fpir"]),
        achieved_fpir=float(rec["achieved_fpir"]),
        fnir=rec.get("fnir"),
        n_mated=int(rec["n_mated"]),
        n_nonmated=int(rec["n_nonmated"]),
        dataset=str(rec["dataset"]),
        dataset_hash=str(rec["dataset_hash"]),
        produced=str(rec["date"]),
        command=str(rec["command"]),
        evaluation=dict(rec.get("evaluation") or {}),
    )


def operating_threshold(s: Session, model_key: str) -> OperatingThreshold | None:
    """The threshold in force for ``model_key``: its active recorded calibration if there is one
    (measured on the force's own data, audited), else the shipped one, else None."""
    rec = s.scalar(
        select(ThresholdRecord)
        .where(ThresholdRecord.model_key == model_key, ThresholdRecord.active.is_(True))
        .order_by(ThresholdRecord.id.desc())
    )
    if rec is None:
        return shipped_threshold(model_key)
    return OperatingThreshold(
        model_key=model_key,
        value=float(rec.threshold),
        source="calibrated",
        target_fpir=float(rec.target_fpir),
        achieved_fpir=float(rec.achieved_fpir),
        fnir=rec.fnir,
        n_mated=int(rec.n_mated),
        n_nonmated=int(rec.n_nonmated),
        dataset=rec.dataset,
        dataset_hash=rec.dataset_hash,
        produced=rec.created_at.isoformat(),
        record_id=int(rec.id),
        evaluation=dict(rec.evaluation or {}),
    )


class Calibration(Protocol):
    """What a calibration establishes (``retroface.eval.runner.Calibration`` provides it)."""

    model_key: str
    threshold: float
    target_fpir: float
    achieved_fpir: float
    fnir: float
    n_mated: int
    n_nonmated: int
    dataset_hash: str
    dataset: str


class ThresholdService:
    def __init__(
        self,
        db: Database,
        audit: AuditFn,
        clock: Callable[[], datetime] = utcnow,
        *,
        max_fnir_ratio: float = 1.5,
        max_fpir_ratio: float = 1.5,
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.guard = Guard(db, audit, clock)
        self.max_fnir_ratio = max_fnir_ratio
        self.max_fpir_ratio = max_fpir_ratio

    def check_may_record(self, principal: Principal) -> None:
        """Refuse (audited) a caller who may not set thresholds: called before minutes of
        calibration work, and again by :meth:`record`."""
        self.guard.require(principal, Role.ADMIN, action=ACTION, object_type="threshold_record")

    def record(
        self,
        principal: Principal,
        cal: Calibration,
        pipeline: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        *,
        override_fairness: str | None = None,
    ) -> int:
        """Make ``cal`` the model's active threshold; returns the new record's id.

        Older active records of the model are deactivated, the new one added and audited, all
        in one transaction, so no search can see two active thresholds or none in between.
        ``evaluation`` (per-group figures at the threshold, other FPIR points) is stored with
        it and its per-group figures audited: a threshold change regenerates the DPIA figures.

        A differential above the fairness limits refuses the change (audited, ConflictError)
        unless ``override_fairness`` gives the admin's justification, which is then stored
        with the record and audited.
        """
        self.check_may_record(principal)
        limits = {"max_fnir_ratio": self.max_fnir_ratio, "max_fpir_ratio": self.max_fpir_ratio}
        breaches = fairness_breaches(evaluation, self.max_fnir_ratio, self.max_fpir_ratio)
        justification = (override_fairness or "").strip() or None
        if breaches and justification is None:
            shown = "; ".join(
                f"{b['rate'].upper()} ratio by {b['attribute']} "
                f"{'unbounded' if b['ratio'] is None else format(b['ratio'], '.3g')} "
                f"({b['highest']} vs {b['lowest']}) > {b['limit']:g}"
                for b in breaches
            )
            error = ConflictError(
                f"the calibration's differential exceeds the fairness limits: {shown}; an admin "
                "may record it with a justification (--override-fairness)"
            )
            self.guard.refused(
                principal,
                ACTION,
                error,
                object_type="threshold_record",
                details={
                    "model_key": cal.model_key,
                    "threshold": cal.threshold,
                    "fairness": {"limits": limits, "breaches": breaches},
                    "demographics": group_rates(evaluation),
                },
            )
            raise error
        fairness: dict[str, Any] = {
            "checked": bool((evaluation or {}).get("demographics")),
            "limits": limits,
            "breaches": breaches,
            "override": (
                {"justification": justification, "by": principal.username} if breaches else None
            ),
        }
        stored = {**evaluation, "fairness": fairness} if evaluation else None
        now = self.clock()
        with self.db.session() as s:
            previous = s.execute(
                update(ThresholdRecord)
                .where(ThresholdRecord.model_key == cal.model_key, ThresholdRecord.active.is_(True))
                .values(active=False)
                .returning(ThresholdRecord.id)
            ).scalars()
            deactivated = sorted(int(i) for i in previous)
            record = ThresholdRecord(
                model_key=cal.model_key,
                threshold=cal.threshold,
                target_fpir=cal.target_fpir,
                achieved_fpir=cal.achieved_fpir,
                fnir=cal.fnir,
                dataset_hash=cal.dataset_hash,
                dataset=cal.dataset[:500],
                n_mated=cal.n_mated,
                n_nonmated=cal.n_nonmated,
                created_at=now,
                created_by=principal.username,
                active=True,
                evaluation=stored,
            )
            s.add(record)
            s.flush()
            self.audit(
                s,
                actor=principal,
                action=ACTION,
                object_type="threshold_record",
                object_id=record.id,
                details={
                    "model_key": cal.model_key,
                    "threshold": cal.threshold,
                    "target_fpir": cal.target_fpir,
                    "achieved_fpir": cal.achieved_fpir,
                    "fnir": cal.fnir,
                    "n_mated": cal.n_mated,
                    "n_nonmated": cal.n_nonmated,
                    "dataset": cal.dataset,
                    "dataset_hash": cal.dataset_hash,
                    "deactivated": deactivated,
                    "pipeline": {k: v for k, v in (pipeline or {}).items() if k in PIPELINE_KEYS},
                    "demographics": group_rates(evaluation),
                    "rule": (evaluation or {}).get("rule", {}).get("rule", "overall"),
                    "fairness": fairness,
                },
                ts=now,
            )
            return int(record.id)
