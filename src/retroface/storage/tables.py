"""The relational schema: the database is the source of truth for everything but image bytes.

Embeddings are biometric data, so they are stored encrypted (``*_enc`` columns, AES-GCM with the
row's identity as associated data); image bytes live in the encrypted blob store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from retroface.core.clock import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


# --------------------------------------------------------------------------- gallery


class GalleryState(Base):
    """One row: the gallery version, bumped in the same transaction as any searchable change."""

    __tablename__ = "gallery_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class GalleryChange(Base):
    """What one gallery version changed: the template ids it added and removed.

    Written in the transaction that bumps the version, so another process holding the index at
    an older version follows by reading only these ids (and the added templates), never the
    whole gallery (issue #16). Ids only: no biometric data, nothing to erase.
    """

    __tablename__ = "gallery_changes"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    added: Mapped[list[int]] = mapped_column(JSON, default=list)
    removed: Mapped[list[int]] = mapped_column(JSON, default=list)


class Subject(Base):
    __tablename__ = "subjects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    inclusion_reason: Mapped[str] = mapped_column(String(200), default="unspecified")
    legal_basis: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    retention_until: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="active")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    images: Mapped[list[ReferenceImage]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class ReferenceImage(Base):
    __tablename__ = "reference_images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), index=True
    )
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    original_name: Mapped[str | None] = mapped_column(String(500))
    provenance: Mapped[str | None] = mapped_column(String(500))
    capture_date: Mapped[datetime | None] = mapped_column()
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    subject: Mapped[Subject] = relationship(back_populates="images")
    templates: Mapped[list[FaceTemplate]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class FaceTemplate(Base):
    __tablename__ = "face_templates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("reference_images.id", ondelete="CASCADE"), index=True
    )
    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), index=True
    )
    model_key: Mapped[str] = mapped_column(String(200), index=True)
    embedding_enc: Mapped[bytes] = mapped_column(LargeBinary)
    det_score: Mapped[float] = mapped_column(Float)
    box: Mapped[dict[str, Any]] = mapped_column(default=dict)
    quality: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    image: Mapped[ReferenceImage] = relationship(back_populates="templates")


# --------------------------------------------------------------------------- governance


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(300))
    roles: Mapped[str] = mapped_column(String(200), default="")  # comma-separated
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: A service account (another system): no password; an admin may issue its tokens.
    service: Mapped[bool] = mapped_column(Boolean, default=False)


class LoginThrottle(Base):
    """Failed password logins per account name, so every API worker sees one lockout.

    Keyed by the name as typed (folded), whether or not such an account exists, so a lockout
    says nothing about which accounts exist. ``failures`` counts the current window; the
    failures after the first and the attempts refused while locked are not audited one by one
    but summarised (``login.failed.summary``) when the window closes or at the next login.
    """

    __tablename__ = "login_throttle"
    username: Mapped[str] = mapped_column(String(100), primary_key=True)
    window_start: Mapped[datetime] = mapped_column()
    failures: Mapped[int] = mapped_column(Integer, default=0)
    unaudited: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="token")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(100), unique=True)
    offence_category: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(Text)
    justification: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    urgent_deadline: Mapped[datetime | None] = mapped_column()
    opened_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column()
    decision_note: Mapped[str | None] = mapped_column(Text)
    authorised_until: Mapped[datetime | None] = mapped_column()
    purged_at: Mapped[datetime | None] = mapped_column()
    #: The authoriser allowed investigation mode: searches list the top-k candidates whatever
    #: their score, those below the operating threshold marked so (NIST's investigative use).
    investigation_mode: Mapped[bool] = mapped_column(Boolean, default=False)


class CaseMember(Base):
    """Need-to-know: who besides the case's opener works on it (``member``, added by the owner)
    or oversees it (``supervisor``, added by an authoriser)."""

    __tablename__ = "case_members"
    __table_args__ = (UniqueConstraint("case_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))  # member, supervisor
    added_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Probe(Base):
    __tablename__ = "probes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    media_type: Mapped[str] = mapped_column(String(20), default="image")
    original_name: Mapped[str | None] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(200))
    how_obtained: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    uploaded_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: An enhanced version names the version it was derived from and goes with it (retention,
    #: case purge); ``derivation`` records its steps and hashes (see search.enhance).
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("probes.id", ondelete="CASCADE"), index=True
    )
    derivation: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ProbeFace(Base):
    __tablename__ = "probe_faces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"), index=True)
    face_index: Mapped[int] = mapped_column(Integer)
    model_key: Mapped[str] = mapped_column(String(200))
    embedding_enc: Mapped[bytes] = mapped_column(LargeBinary)
    det_score: Mapped[float] = mapped_column(Float)
    box: Mapped[dict[str, Any]] = mapped_column(default=dict)
    quality: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SearchRecord(Base):
    __tablename__ = "searches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), index=True
    )
    probe_id: Mapped[int | None] = mapped_column(ForeignKey("probes.id", ondelete="SET NULL"))
    probe_face_id: Mapped[int | None] = mapped_column(
        ForeignKey("probe_faces.id", ondelete="SET NULL")
    )
    probe_hash: Mapped[str] = mapped_column(String(64))
    probe_source: Mapped[str | None] = mapped_column(String(200))
    probe_how_obtained: Mapped[str | None] = mapped_column(String(500))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    gallery_version: Mapped[int] = mapped_column(Integer)
    model_key: Mapped[str] = mapped_column(String(200))
    threshold: Mapped[float | None] = mapped_column(Float)
    threshold_record_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_records.id"))
    #: Where ``threshold`` (the cut applied to the list) came from: calibrated, shipped or
    #: explicit; None when no cut was applied (investigation mode, or a model with no threshold).
    threshold_source: Mapped[str | None] = mapped_column(String(20))
    #: The model's operating threshold in force at the time, and its source (calibrated or
    #: shipped): what a reviewer is shown each candidate against, whatever the mode.
    operating_threshold: Mapped[float | None] = mapped_column(Float)
    operating_source: Mapped[str | None] = mapped_column(String(20))
    #: ``operating`` (candidates below the operating threshold hidden) or ``investigation``.
    mode: Mapped[str] = mapped_column(String(20), default="operating")
    top_k: Mapped[int] = mapped_column(Integer)
    probe_quality: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: For a search of an enhanced version: the chain from the original (its hash) through each
    #: derivation's steps to the version searched, kept for disclosure after the probes go.
    probe_lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(
        String(100), default="investigative lead — not an identification"
    )
    review_status: Mapped[str] = mapped_column(String(20), default="pending")
    review_outcome: Mapped[str | None] = mapped_column(String(40))
    candidates: Mapped[list[Candidate]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Candidate.rank"
    )


class Candidate(Base):
    __tablename__ = "candidates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    rank: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="SET NULL"))
    subject_reference: Mapped[str] = mapped_column(String(200))
    similarity: Mapped[float] = mapped_column(Float)
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("reference_images.id", ondelete="SET NULL")
    )


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("search_id", "reviewer_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    stage: Mapped[str] = mapped_column(String(20))  # first, second, tiebreak
    decision: Mapped[str] = mapped_column(String(40))
    candidate_rank: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ThresholdRecord(Base):
    __tablename__ = "threshold_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(200), index=True)
    threshold: Mapped[float] = mapped_column(Float)
    target_fpir: Mapped[float] = mapped_column(Float)
    achieved_fpir: Mapped[float] = mapped_column(Float)
    fnir: Mapped[float | None] = mapped_column(Float)
    dataset_hash: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(500))
    n_mated: Mapped[int] = mapped_column(Integer, default=0)
    n_nonmated: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The evaluation the threshold came from: per-group FNIR/FPIR at it (with intervals and
    #: ratios) and the other FPIR points, so the DPIA report shows the live figures.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# --------------------------------------------------------------------------- audit


class AuditRecord(Base):
    """Append-only; ``hash`` chains each record to the previous one (see retroface.audit)."""

    __tablename__ = "audit_records"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60), index=True)
    case_ref: Mapped[str | None] = mapped_column(String(100), index=True)
    object_type: Mapped[str | None] = mapped_column(String(60))
    object_id: Mapped[str | None] = mapped_column(String(200))
    justification: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------- jobs


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Who holds the job: ``kind:host:pid:token`` (see ``retroface.jobs.store``), so a job
    #: whose runner died can be told from one that is merely slow.
    runner: Mapped[str | None] = mapped_column(String(120))


Index("ix_templates_model_subject", FaceTemplate.model_key, FaceTemplate.subject_id)
