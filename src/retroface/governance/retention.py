"""Retention: biometric data is deleted when its period ends, and each deletion is audited.

Data classes and their clocks: probe images and their faces run from upload; search records
(candidate lists and reviews) from the search; reference subjects from their ``retention_until``;
urgent cases that were never authorised from their deadline. Audit records are kept (at least six
months, by policy); deleting one would break the hash chain, so they are exported, not trimmed.

Who may run it: an admin (on demand, CLI or API) or the system itself (:data:`SYSTEM`, for a
scheduled run with nobody logged in). Both are checked here; a refused run, dry or not, is audited
as ``retention.run.refused``. A dry run changes nothing and, as before, writes no record.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from retroface.audit.guard import Guard
from retroface.core.access import SYSTEM, AuditFn, Principal
from retroface.core.clock import Clock, utcnow
from retroface.core.roles import Role
from retroface.core.status import CaseStatus
from retroface.gallery.service import GalleryService
from retroface.governance.cases import CaseService
from retroface.governance.policy import GovernancePolicy
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.references import still_referenced
from retroface.storage.tables import Case, Probe, SearchRecord, Subject


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
            probes = list(
                s.scalars(
                    select(Probe.id).where(Probe.created_at < now - self.policy.probe_retention)
                )
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
            report.files_deleted += self.cases.purge(
                ref, actor, "urgent window expired without authorisation"
            ).files_deleted
        self._delete_searches(report.searches, actor)
        report.files_deleted += self._delete_probes(report.probes, actor)
        for ref in report.subjects_erased:
            report.files_deleted += self.gallery.expire(principal, ref).files_deleted
        return report

    def _delete_searches(self, ids: list[int], actor: str | Principal) -> None:
        if not ids:
            return
        with self.db.session() as s:
            for rec in s.scalars(select(SearchRecord).where(SearchRecord.id.in_(ids))):
                s.delete(rec)
            self.audit(
                s,
                actor=actor,
                action="retention.search_delete",
                object_type="search",
                object_id=",".join(map(str, ids)),
                justification="search record retention period ended",
                details={"count": len(ids)},
                ts=self.clock(),
            )

    def _delete_probes(self, ids: list[int], actor: str | Principal) -> int:
        if not ids:
            return 0
        with self.db.session() as s:
            probes = list(s.scalars(select(Probe).where(Probe.id.in_(ids))))
            hashes = {p.content_hash for p in probes}
            for p in probes:
                s.delete(p)
            shared = still_referenced(s, hashes)
            self.audit(
                s,
                actor=actor,
                action="retention.probe_delete",
                object_type="probe",
                object_id=",".join(map(str, ids)),
                justification="probe retention period ended",
                details={"count": len(ids)},
                ts=self.clock(),
            )
        return sum(self.blobs.delete(h) for h in hashes - shared)
