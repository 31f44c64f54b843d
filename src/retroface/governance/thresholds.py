"""The operating threshold of a model: which calibration is in force, recorded and audited.

Every later search records the active :class:`~retroface.storage.tables.ThresholdRecord` of its
model, so setting one changes how every candidate list is read: only an admin may, and each new
record (or refused attempt) is written to the audit log by this service, not by a front end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import update

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.roles import Role
from retroface.storage.db import Database
from retroface.storage.tables import ThresholdRecord

ACTION = "threshold.calibrate"
#: The pipeline settings that change scores, and so belong with the threshold they produced.
PIPELINE_KEYS = ("det_size", "flip")


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
        self, db: Database, audit: AuditFn, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    def check_may_record(self, principal: Principal) -> None:
        """Refuse (audited) a caller who may not set thresholds: called before minutes of
        calibration work, and again by :meth:`record`."""
        self.guard.require(principal, Role.ADMIN, action=ACTION, object_type="threshold_record")

    def record(
        self,
        principal: Principal,
        cal: Calibration,
        pipeline: Mapping[str, Any] | None = None,
    ) -> int:
        """Make ``cal`` the model's active threshold; returns the new record's id.

        Older active records of the model are deactivated, the new one added and audited, all
        in one transaction, so no search can see two active thresholds or none in between.
        """
        self.check_may_record(principal)
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
                },
                ts=now,
            )
            return int(record.id)
