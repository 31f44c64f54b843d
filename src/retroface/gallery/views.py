"""What the gallery services return: one typed shape for the services, the API and ``--json``.

The API declares these as its response models and the CLI prints ``model_dump(mode="json")``, so
a field added here shows up in both, and neither restates it. Pydantic only, no web framework.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field, field_serializer

from retroface.core.status import SubjectStatus


class SubjectSummary(BaseModel):
    """A subject as listed: who, why they are in the gallery, and how many images."""

    reference: str
    display_name: str | None
    inclusion_reason: str
    legal_basis: str | None
    source: str | None
    retention_until: datetime | None
    status: SubjectStatus
    created_at: datetime
    images: int


class SubjectPage(BaseModel):
    """One page of :class:`SubjectSummary`, by reference."""

    offset: int
    limit: int
    items: list[SubjectSummary]


class TemplateView(BaseModel):
    model: str
    det_score: float
    quality: dict[str, Any]


class ReferenceImageView(BaseModel):
    image_id: int
    content_hash: str
    original_name: str | None
    provenance: str | None
    capture_date: datetime | None
    size: list[int] = Field(description="[width, height] in pixels")
    templates: list[TemplateView]


class SubjectDetail(SubjectSummary):
    """One subject with its metadata, reference images and templates."""

    meta: dict[str, Any]
    reference_images: list[ReferenceImageView]


class GalleryStats(BaseModel):
    """Gallery size by inclusion reason, source and model: aggregate counts, no personal data."""

    subjects: int
    images: int
    templates: int
    templates_by_model: dict[str, int]
    subjects_by_inclusion_reason: dict[str, int]
    subjects_by_source: dict[str, int]
    gallery_version: int


class GalleryCheck(BaseModel):
    """Files, rows and index compared; ``repaired`` when orphan files were deleted."""

    orphan_files: int
    missing_files: int
    index_count: int
    template_count: int
    index_matches_database: bool
    repaired: bool


class IndexStatus(BaseModel):
    """The vector index a process searches, after bringing it up to the gallery's version."""

    model: str
    kind: str = Field(description="The index serving: flat, lean, ivf, hnsw or a sharded kind")
    version: int = Field(description="The gallery version the index holds")
    templates: int
    gallery_version: int = Field(description="The database's version, read after the index")
    seconds: float = Field(
        description="Time to bring the index current: in a warm server, the catch-up through the "
        "change log since its last use; in a new process, the whole load"
    )

    @field_serializer("seconds")
    def _round_seconds(self, value: float) -> float:
        return round(value, 4)


class ErasureResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    subject: str
    images: int
    templates: int
    files_deleted: int
    gallery_version: int


class Rejection(BaseModel):
    """An image that was not enrolled, and why."""

    path: str
    reason: str


class LowQualityReference(BaseModel):
    """An image enrolled although its face breaks a quality minimum (flagged, not refused):
    the minimums it breaks, as its template records them."""

    path: str
    image_id: int
    reasons: list[str]


class EnrolSummary(BaseModel):
    """What an enrolment run did; filled in by :meth:`Enroller.run` as it goes."""

    enrolled: int = 0
    skipped: int = 0
    rejected: list[Rejection] = Field(default_factory=list)
    #: enrolled, but below a quality minimum (refused instead with ``require_quality``)
    low_quality: list[LowQualityReference] = Field(default_factory=list)
    subjects: int = 0
    new_subjects: int = 0
    seconds: float = 0.0
    gallery_version: int = 0
    #: The subjects that received images (``subjects`` counts them): not in the summary's dump,
    #: which would grow with the run; the API's multi-image upload returns them
    #: (:class:`EnrolUploadSummary`) so that a client adding up several runs counts each once.
    _touched: set[str] = PrivateAttr(default_factory=set)

    def touch(self, subjects: set[str]) -> None:
        self._touched = set(subjects)
        self.subjects = len(self._touched)

    def touched_subjects(self) -> list[str]:
        return sorted(self._touched)

    @field_serializer("seconds")
    def _round_seconds(self, value: float) -> float:
        return round(value, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def images_per_second(self) -> float | None:
        if not self.seconds:
            return None
        return round((self.enrolled + len(self.rejected)) / self.seconds, 2)


class EnrolUploadSummary(EnrolSummary):
    """The summary of an enrolment of uploaded images (``POST /gallery/images``), with the
    references of the subjects it enrolled images for: the CLI's remote ``gallery enrol`` sends a
    long run as several such requests and adds them up into one :class:`EnrolSummary`."""

    subject_references: list[str] = Field(default_factory=list)
