"""Gallery administration: what is enrolled, and erasure that leaves nothing behind.

Every public action takes the acting :class:`Principal` first and checks its roles here, not in
the CLI or API: reading the gallery needs admin or auditor, changing it needs admin. A refusal is
audited as ``<action>.refused``; an erasure is audited in the transaction that erases.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.core.access import SYSTEM, AuditFn, Principal
from retroface.core.clock import Clock, utcnow
from retroface.core.errors import NotFoundError
from retroface.core.roles import Role
from retroface.core.status import SubjectStatus
from retroface.core.text import check_page, optional_text, subject_reference
from retroface.gallery.views import (
    ErasureResult,
    GalleryCheck,
    GalleryStats,
    IndexStatus,
    ReferenceImageView,
    SubjectDetail,
    SubjectSummary,
    TemplateView,
)
from retroface.search.index_manager import IndexManager
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.references import still_referenced
from retroface.storage.tables import FaceTemplate, Probe, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version, gallery_version


def subject_summary(subject: Subject, n_images: int | None = None) -> SubjectSummary:
    return SubjectSummary(
        reference=subject.reference,
        display_name=subject.display_name,
        inclusion_reason=subject.inclusion_reason,
        legal_basis=subject.legal_basis,
        source=subject.source,
        retention_until=subject.retention_until,
        status=SubjectStatus(subject.status),
        created_at=subject.created_at,
        images=n_images if n_images is not None else len(subject.images),
    )


#: Who may read the gallery (list, show, stats, check) and who may change it (enrol, erase,
#: repair): the same rules as the API's access matrix, enforced here for every front end.
READERS = (Role.ADMIN, Role.AUDITOR)
WRITERS = (Role.ADMIN,)


class GalleryService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        index: IndexManager,
        audit: AuditFn,
        clock: Clock = utcnow,
    ) -> None:
        self.clock = clock
        self.db = db
        self.blobs = blobs
        self.index = index
        self.audit = audit  # written in the same transaction as the change it records
        self.guard = Guard(db, audit, clock)

    def list_subjects(
        self, principal: Principal, offset: int = 0, limit: int = 100, query: str | None = None
    ) -> list[SubjectSummary]:
        """Subjects by reference; with ``query``, those whose reference or display name
        contains it (case-insensitive): the admin's subject search before an erasure."""
        check_page(offset, limit)
        optional_text(query, "query", 100)
        self.guard.require(principal, *READERS, action="gallery.list")
        stmt = select(Subject, func.count(ReferenceImage.id)).outerjoin(ReferenceImage)
        if query and query.strip():
            pattern = "%" + _escape_like(query.strip().lower()) + "%"
            stmt = stmt.where(
                or_(
                    func.lower(Subject.reference).like(pattern, escape="\\"),
                    func.lower(func.coalesce(Subject.display_name, "")).like(pattern, escape="\\"),
                )
            )
        with self.db.session() as s:
            rows = s.execute(
                stmt.group_by(Subject.id).order_by(Subject.reference).offset(offset).limit(limit)
            ).all()
            # who looked through the gallery, and which page of it (a read of personal data)
            self.audit(
                s,
                actor=principal,
                action="gallery.list",
                object_type="subject",
                details={"offset": offset, "limit": limit, "returned": len(rows)}
                | ({"query": query.strip()} if query and query.strip() else {}),
                ts=self.clock(),
            )
            return [subject_summary(subj, n) for subj, n in rows]

    def _get(self, s: Session, reference: str) -> Subject:
        subject = s.scalar(select(Subject).where(Subject.reference == reference))
        if subject is None:
            raise NotFoundError(f"no subject {reference!r} in the gallery")
        return subject

    def show(self, principal: Principal, reference: str) -> SubjectDetail:
        subject_reference(reference)
        self.guard.require(
            principal, *READERS, action="gallery.show", object_type="subject", object_id=reference
        )
        with self.db.session() as s:
            subject = self._get(s, reference)
            self.audit(
                s,
                actor=principal,
                action="gallery.show",
                object_type="subject",
                object_id=reference,
                ts=self.clock(),
            )
            return SubjectDetail(
                **subject_summary(subject).model_dump(),
                meta=subject.meta,
                reference_images=[
                    ReferenceImageView(
                        image_id=img.id,
                        content_hash=img.content_hash,
                        original_name=img.original_name,
                        provenance=img.provenance,
                        capture_date=img.capture_date,
                        size=[img.width, img.height],
                        templates=[
                            TemplateView(
                                model=t.model_key,
                                det_score=round(t.det_score, 4),
                                quality=t.quality,
                            )
                            for t in img.templates
                        ],
                    )
                    for img in subject.images
                ],
            )

    def erase(
        self, principal: Principal, reference: str, reason: str | None = None
    ) -> ErasureResult:
        """Remove a subject's images, templates, files and index entries (admin)."""
        subject_reference(reference)
        optional_text(reason, "reason", 500, multiline=True)
        self.guard.require(
            principal, *WRITERS, action="gallery.erase", object_type="subject", object_id=reference
        )
        return self._erase(principal, reference, reason, "gallery.erase")

    def expire(self, principal: Principal, reference: str) -> ErasureResult:
        """Erase a subject whose retention period has ended: the retention run's erasure.

        Allowed to an admin and to the system itself (:data:`SYSTEM`, a scheduled retention run),
        and audited as ``retention.subject_erase`` so the log tells it from a decision to erase.
        """
        action = "retention.subject_erase"
        if principal != SYSTEM:
            self.guard.require(
                principal, *WRITERS, action=action, object_type="subject", object_id=reference
            )
        return self._erase(principal, reference, "retention period ended", action)

    def _erase(
        self, principal: Principal, reference: str, reason: str | None, action: str
    ) -> ErasureResult:
        """Rows go first in one transaction (with the version bump, so no search sees a
        half-erased subject, and with the audit record); files follow once that has committed."""
        with self.index.changing():  # a search meeting the commit waits for the apply
            with self.db.session() as s:
                subject = self._get(s, reference)
                images = list(subject.images)
                hashes = [img.content_hash for img in images]
                template_ids = [t.id for img in images for t in img.templates]
                details: dict[str, Any] = {"images": len(images), "templates": len(template_ids)}
                if action == "retention.subject_erase" and subject.retention_until is not None:
                    # when it fell due, so the oversight figures can tell an erasure on time from
                    # one made late (the subject row, which held the date, is gone)
                    details["due"] = subject.retention_until.isoformat()
                model_keys = {t.model_key for img in images for t in img.templates}
                s.delete(subject)
                s.flush()
                version = bump_gallery_version(s, removed=template_ids)
                self.audit(
                    s,
                    actor=principal,
                    action=action,
                    object_type="subject",
                    object_id=reference,
                    justification=reason,
                    details=details,
                    ts=self.clock(),
                )
                still_used = still_referenced(s, hashes)
            deleted = sum(self.blobs.delete(h) for h in set(hashes) - still_used)
            for key in model_keys:
                self.index.apply(key, version, removed=template_ids, save=True)
        return ErasureResult(
            subject=reference,
            images=len(images),
            templates=len(template_ids),
            files_deleted=deleted,
            gallery_version=version,
        )

    def stats(self, principal: Principal) -> GalleryStats:
        self.guard.require(principal, *READERS, action="gallery.stats")
        return gallery_stats(self.db)

    def index_status(self, principal: Principal, model_key: str) -> IndexStatus:
        """The index this process searches, brought up to the database's gallery version first.

        In a server that is the catch-up after another process enrolled or erased (the change
        log read, the new templates decrypted and added in place): ``seconds`` says how long it
        took, so the pick-up can be measured apart from a search (bench/server_1m.py). In a new
        process it is the whole load. Counts only, like :meth:`stats`; not audited.
        """
        self.guard.require(principal, *READERS, action="gallery.index")
        started = time.perf_counter()
        with self.index.reading(model_key) as loaded:
            version, count = loaded.version, loaded.index.count()
            kind = str(getattr(loaded.index, "chosen", None) or getattr(loaded.index, "kind", "?"))
        seconds = time.perf_counter() - started
        with self.db.session() as s:
            current = gallery_version(s)
        return IndexStatus(
            model=model_key,
            kind=kind,
            version=version,
            templates=count,
            gallery_version=current,
            seconds=seconds,
        )

    def check(self, principal: Principal, model_key: str, repair: bool = False) -> GalleryCheck:
        """Compare files, rows and the index; with ``repair`` (admin) delete orphan files.

        A repair is audited (``gallery.repair``) because it deletes files; a plain check only
        reads, like :meth:`stats`.
        """
        if repair:
            self.guard.require(principal, *WRITERS, action="gallery.repair")
        else:
            self.guard.require(principal, *READERS, action="gallery.check")
        with self.db.session() as s:
            referenced = set(s.scalars(select(ReferenceImage.content_hash))) | set(
                s.scalars(select(Probe.content_hash))
            )
            template_ids = set(
                s.scalars(select(FaceTemplate.id).where(FaceTemplate.model_key == model_key))
            )
        stored = set(self.blobs.names())  # keyed file names: compare names, not hashes
        orphans = sorted(stored - self.blobs.names_of(referenced))
        missing = sorted(d for d in referenced if not self.blobs.names_of([d]) & stored)
        with self.index.reading(model_key) as loaded:  # one consistent state, not a torn one
            index_ids = set(loaded.subject_of)
            index_count = loaded.index.count()
        if repair:
            # recorded before the files go, as with erasure: a crash leaves a record of a repair
            # the next run finishes, never a deletion nobody recorded
            with self.db.session() as s:
                self.audit(
                    s,
                    actor=principal,
                    action="gallery.repair",
                    details={"orphan_files": len(orphans)},
                    ts=self.clock(),
                )
            for name in orphans:
                self.blobs.delete_name(name)
        return GalleryCheck(
            orphan_files=len(orphans),
            missing_files=len(missing),
            index_count=index_count,
            template_count=len(template_ids),
            index_matches_database=index_ids == template_ids and index_count == len(template_ids),
            repaired=repair,
        )


def gallery_stats(db: Database) -> GalleryStats:
    """Gallery size by inclusion reason, source and model: aggregate counts, no personal data.

    For callers that have already checked their own roles (the transparency and DPIA reports);
    everyone else asks :meth:`GalleryService.stats`, which checks the caller's.
    """
    with db.session() as s:
        by_reason = dict(
            s.execute(
                select(Subject.inclusion_reason, func.count(Subject.id)).group_by(
                    Subject.inclusion_reason
                )
            ).all()
        )
        by_source: dict[str, int] = {}
        for src, n in s.execute(
            select(Subject.source, func.count(Subject.id)).group_by(Subject.source)
        ).all():
            by_source[src or "unspecified"] = by_source.get(src or "unspecified", 0) + n
        by_model = dict(
            s.execute(
                select(FaceTemplate.model_key, func.count(FaceTemplate.id)).group_by(
                    FaceTemplate.model_key
                )
            ).all()
        )
        return GalleryStats(
            subjects=s.scalar(select(func.count(Subject.id))) or 0,
            images=s.scalar(select(func.count(ReferenceImage.id))) or 0,
            templates=s.scalar(select(func.count(FaceTemplate.id))) or 0,
            templates_by_model=by_model,
            subjects_by_inclusion_reason=by_reason,
            subjects_by_source=by_source,
            gallery_version=gallery_version(s),
        )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
