"""Gallery administration: what is enrolled, and erasure that leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from retroface.core.clock import utcnow
from retroface.core.errors import NotFoundError
from retroface.search.index_manager import IndexManager
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.references import still_referenced
from retroface.storage.tables import FaceTemplate, Probe, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version, gallery_version


@dataclass(frozen=True)
class ErasureResult:
    subject: str
    images: int
    templates: int
    files_deleted: int
    gallery_version: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def subject_dict(subject: Subject, n_images: int | None = None) -> dict[str, Any]:
    return {
        "reference": subject.reference,
        "display_name": subject.display_name,
        "inclusion_reason": subject.inclusion_reason,
        "legal_basis": subject.legal_basis,
        "source": subject.source,
        "retention_until": subject.retention_until,
        "status": subject.status,
        "created_at": subject.created_at,
        "images": n_images if n_images is not None else len(subject.images),
    }


class GalleryService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        index: IndexManager,
        audit: Callable[..., object] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        self.db = db
        self.blobs = blobs
        self.index = index
        self.audit = audit  # audit(session, actor=..., action=..., ...) in the same transaction

    def list_subjects(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.execute(
                select(Subject, func.count(ReferenceImage.id))
                .outerjoin(ReferenceImage)
                .group_by(Subject.id)
                .order_by(Subject.reference)
                .offset(offset)
                .limit(limit)
            ).all()
            return [subject_dict(subj, n) for subj, n in rows]

    def _get(self, s: Session, reference: str) -> Subject:
        subject = s.scalar(select(Subject).where(Subject.reference == reference))
        if subject is None:
            raise NotFoundError(f"no subject {reference!r} in the gallery")
        return subject

    def show(self, reference: str) -> dict[str, Any]:
        with self.db.session() as s:
            subject = self._get(s, reference)
            data = subject_dict(subject)
            data["meta"] = subject.meta
            data["reference_images"] = [
                {
                    "image_id": img.id,
                    "content_hash": img.content_hash,
                    "original_name": img.original_name,
                    "provenance": img.provenance,
                    "capture_date": img.capture_date,
                    "size": [img.width, img.height],
                    "templates": [
                        {
                            "model": t.model_key,
                            "det_score": round(t.det_score, 4),
                            "quality": t.quality,
                        }
                        for t in img.templates
                    ],
                }
                for img in subject.images
            ]
            return data

    def erase(
        self,
        reference: str,
        actor: str = "system",
        reason: str | None = None,
        action: str = "gallery.erase",
    ) -> ErasureResult:
        """Remove a subject's images, templates, files and index entries.

        Rows go first in one transaction (with the version bump, so no search sees a half-erased
        subject); files follow once that has committed.
        """
        with self.db.session() as s:
            subject = self._get(s, reference)
            images = list(subject.images)
            hashes = [img.content_hash for img in images]
            template_ids = [t.id for img in images for t in img.templates]
            model_keys = {t.model_key for img in images for t in img.templates}
            s.delete(subject)
            s.flush()
            version = bump_gallery_version(s)
            if self.audit:
                self.audit(
                    s,
                    actor=actor,
                    action=action,
                    object_type="subject",
                    object_id=reference,
                    justification=reason,
                    details={"images": len(images), "templates": len(template_ids)},
                    ts=self.clock(),
                )
            still_used = still_referenced(s, hashes)
        deleted = sum(self.blobs.delete(h) for h in set(hashes) - still_used)
        for key in model_keys:
            self.index.apply(key, version, removed=template_ids, save=True)
        return ErasureResult(reference, len(images), len(template_ids), deleted, version)

    def stats(self) -> dict[str, Any]:
        with self.db.session() as s:
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
            return {
                "subjects": s.scalar(select(func.count(Subject.id))) or 0,
                "images": s.scalar(select(func.count(ReferenceImage.id))) or 0,
                "templates": s.scalar(select(func.count(FaceTemplate.id))) or 0,
                "templates_by_model": by_model,
                "subjects_by_inclusion_reason": by_reason,
                "subjects_by_source": by_source,
                "gallery_version": gallery_version(s),
            }

    def check(self, model_key: str, repair: bool = False) -> dict[str, Any]:
        """Compare files, rows and the index; with ``repair`` delete orphan files."""
        with self.db.session() as s:
            referenced = set(s.scalars(select(ReferenceImage.content_hash))) | set(
                s.scalars(select(Probe.content_hash))
            )
            template_ids = set(
                s.scalars(select(FaceTemplate.id).where(FaceTemplate.model_key == model_key))
            )
        stored = set(self.blobs.digests())
        orphans = sorted(stored - referenced)
        missing = sorted(referenced - stored)
        loaded = self.index.get(model_key)
        index_ids = set(loaded.subject_of)
        if repair:
            for digest in orphans:
                self.blobs.delete(digest)
        return {
            "orphan_files": len(orphans),
            "missing_files": len(missing),
            "index_count": loaded.index.count(),
            "template_count": len(template_ids),
            "index_matches_database": index_ids == template_ids
            and loaded.index.count() == len(template_ids),
            "repaired": repair,
        }
