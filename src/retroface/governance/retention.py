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

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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


@dataclass
class RetentionReport:
    dry_run: bool
    now: datetime
    urgent_cases_expired: list[str] = field(default_factory=list)
    probes: list[int] = field(default_factory=list)
    searches: list[int] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    files_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "now": self.now,
            "urgent_cases_expired": self.urgent_cases_expired,
            "probes_deleted": len(self.probes),
            "searches_deleted": len(self.searches),
            "subjects_erased": self.subjects,
            "files_deleted": self.files_deleted,
        }


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
        actor = principal.username
        now = self.clock()
        report = RetentionReport(dry_run=dry_run, now=now)
        with self.db.session() as s:
            report.urgent_cases_expired = list(
                s.scalars(
                    select(Case.reference).where(
                        Case.status == CaseStatus.PENDING,
                        Case.urgent.is_(True),
                        Case.urgent_deadline < now,
                    )
                )
            )
            report.probes = list(
                s.scalars(
                    select(Probe.id).where(Probe.created_at < now - self.policy.probe_retention)
                )
            )
            report.searches = list(
                s.scalars(
                    select(SearchRecord.id).where(
                        SearchRecord.started_at < now - self.policy.search_record_retention
                    )
                )
            )
            report.subjects = list(
                s.scalars(
                    select(Subject.reference).where(
                        Subject.retention_until.is_not(None), Subject.retention_until < now
                    )
                )
            )
        if dry_run:
            return report
        for ref in report.urgent_cases_expired:
            report.files_deleted += self.cases.purge(
                ref, actor, "urgent window expired without authorisation"
            ).files_deleted
        self._delete_searches(report.searches, actor)
        report.files_deleted += self._delete_probes(report.probes, actor)
        for ref in report.subjects:
            report.files_deleted += self.gallery.expire(principal, ref).files_deleted
        return report

    def _delete_searches(self, ids: list[int], actor: str) -> None:
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

    def _delete_probes(self, ids: list[int], actor: str) -> int:
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
