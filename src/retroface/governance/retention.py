"""Retention: biometric data is deleted when its period ends, and each deletion is audited.

Data classes and their clocks: probe images and their faces run from upload (an enhanced version
from its original's upload: it goes with it); search records (candidate lists and reviews) from
the search; reference subjects from their ``retention_until``; urgent cases that were never
authorised from their deadline. Audit records are kept (at least six
months, by policy); deleting one would break the hash chain, so they are exported, not trimmed.

Who may run it: an admin (on demand, CLI or API) or the system itself (:data:`SYSTEM`, for a
scheduled run with nobody logged in). Both are checked here; a refused run, dry or not, is audited
as ``retention.run.refused``. A dry run changes nothing and, as before, writes no record.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from retroface.audit.guard import Guard
from retroface.core.access import SYSTEM, AuditFn, Principal
from retroface.core.clock import Clock, utcnow
from retroface.core.roles import Role
from retroface.core.status import CaseStatus
from retroface.gallery.service import GalleryService
from retroface.governance.cases import LAPSED_REASON, CaseService
from retroface.governance.policy import GovernancePolicy
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.references import delete_probes, still_referenced, with_derived
from retroface.storage.tables import Case, Probe, SearchRecord, Subject

log = logging.getLogger(__name__)


class RetentionReport(BaseModel):
    """What a retention run deleted (or, dry, would delete).

    The ids of the probes and search records are kept for callers in Python (tests, the report
    that follows a run) but not shown: the JSON gives their counts, as it always has.
    """

    dry_run: bool
    now: datetime
    urgent_cases_expired: list[str] = Field(default_factory=list)
    probes_deleted: int = 0
    searches_deleted: int = 0
    subjects_erased: list[str] = Field(default_factory=list)
    files_deleted: int = 0
    probes: list[int] = Field(default_factory=list, exclude=True)
    searches: list[int] = Field(default_factory=list, exclude=True)


class RetentionService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        policy: GovernancePolicy,
        cases: CaseService,
        gallery: GalleryService,
        audit: AuditFn,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.policy = policy
        self.cases = cases
        self.gallery = gallery
        self.audit = audit
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    def run(self, principal: Principal, dry_run: bool = False) -> RetentionReport:
        """Delete what is due (admin, or :data:`SYSTEM` for a scheduled run)."""
        if principal != SYSTEM:
            self.guard.require(principal, Role.ADMIN, action="retention.run")
        actor: str | Principal = principal
        now = self.clock()
        with self.db.session() as s:
            urgent = list(
                s.scalars(
                    select(Case.reference).where(
                        Case.status == CaseStatus.PENDING,
                        Case.urgent.is_(True),
                        Case.urgent_deadline < now,
                    )
                )
            )
            # an enhanced version goes with its original, whatever its own age
            probes = with_derived(
                s,
                s.scalars(
                    select(Probe.id).where(Probe.created_at < now - self.policy.probe_retention)
                ),
            )
            searches = list(
                s.scalars(
                    select(SearchRecord.id).where(
                        SearchRecord.started_at < now - self.policy.search_record_retention
                    )
                )
            )
            subjects = list(
                s.scalars(
                    select(Subject.reference).where(
                        Subject.retention_until.is_not(None), Subject.retention_until < now
                    )
                )
            )
        report = RetentionReport(
            dry_run=dry_run,
            now=now,
            urgent_cases_expired=urgent,
            probes_deleted=len(probes),
            searches_deleted=len(searches),
            subjects_erased=subjects,
            probes=probes,
            searches=searches,
        )
        if dry_run:
            return report
        for ref in report.urgent_cases_expired:
            report.files_deleted += self.cases.purge(ref, actor, LAPSED_REASON).files_deleted
        self._delete_searches(report.searches, actor)
        report.files_deleted += self._delete_probes(report.probes, actor)
        for ref in report.subjects_erased:
            report.files_deleted += self.gallery.expire(principal, ref).files_deleted
        return report

    def _delete_searches(self, ids: list[int], actor: str | Principal) -> None:
        if not ids:
            return
        with self.db.session() as s:
            records = sorted(
                s.scalars(select(SearchRecord).where(SearchRecord.id.in_(ids))),
                key=lambda r: r.id,
            )
            due = [_iso(r.started_at + self.policy.search_record_retention) for r in records]
            for rec in records:
                s.delete(rec)
            self.audit(
                s,
                actor=actor,
                action="retention.search_delete",
                object_type="search",
                object_id=_summary(ids),
                justification="search record retention period ended",
                # when each fell due (in id order), so oversight can tell on time from late
                details={"count": len(records), "ids": [r.id for r in records], "due": due},
                ts=self.clock(),
            )

    def _delete_probes(self, ids: list[int], actor: str | Principal) -> int:
        if not ids:
            return 0
        with self.db.session() as s:
            probes = sorted(s.scalars(select(Probe).where(Probe.id.in_(ids))), key=lambda p: p.id)
            due = [_iso(p.created_at + self.policy.probe_retention) for p in probes]
            hashes = {p.content_hash for p in probes}
            delete_probes(s, probes)
            shared = still_referenced(s, hashes)
            self.audit(
                s,
                actor=actor,
                action="retention.probe_delete",
                object_type="probe",
                object_id=_summary(ids),
                justification="probe retention period ended",
                details={"count": len(probes), "ids": [p.id for p in probes], "due": due},
                ts=self.clock(),
            )
        return sum(self.blobs.delete(h) for h in hashes - shared)


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="seconds")


def _summary(ids: list[int]) -> str:
    """A short ``object_id`` for a bulk record: the one id, or the first id and how many.

    The full list goes in ``details`` (JSON, no length cap): joined into ``object_id`` (200
    characters) it failed the whole run once ~35-100 items were due, so nothing was ever deleted
    again (issue #11, finding 3).
    """
    first = min(ids)
    return str(first) if len(ids) == 1 else f"{first}+{len(ids) - 1}"


class RetentionScheduler:
    """Runs retention as :data:`SYSTEM` every ``interval_minutes`` on a daemon thread.

    Started by ``serve`` (the API's lifespan) so lapsed urgent cases and expired data go within
    minutes even when nobody touches them and no cron job is set up; ``retention run`` from cron
    remains for deployments without a long-running server. The first run comes one interval
    after the start (a restart is not a reason to delete sooner). A failed run is logged and the
    next one tries again: every run recomputes what is due, so nothing is lost by waiting.
    """

    def __init__(self, retention: RetentionService, interval_minutes: float) -> None:
        if interval_minutes <= 0:
            raise ValueError("the retention interval must be positive")
        self.retention = retention
        self.interval_s = interval_minutes * 60
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="retroface-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def run_once(self) -> RetentionReport | None:
        try:
            report = self.retention.run(SYSTEM)
        except Exception:  # logged; the next run retries (what is due only grows)
            log.exception("scheduled retention run failed")
            return None
        if report.urgent_cases_expired or report.probes or report.searches:
            log.info(
                "scheduled retention: %d urgent cases purged, %d probes, %d searches, "
                "%d subjects erased",
                len(report.urgent_cases_expired),
                report.probes_deleted,
                report.searches_deleted,
                len(report.subjects_erased),
            )
        return report

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
