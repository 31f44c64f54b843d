"""Gallery enrolment (single upload and batch job), listing, erasure and jobs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from pydantic import TypeAdapter, ValidationError

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import EnrolmentRequest, UploadedImageLabels
from retroface.api.uploads import read_upload
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.core.text import MAX_ID, MAX_OFFSET, clean_text, optional_text, safe_filename
from retroface.gallery.enrol import EnrolItem
from retroface.gallery.views import (
    EnrolSummary,
    EnrolUploadSummary,
    ErasureResult,
    GalleryStats,
    IndexStatus,
    SubjectDetail,
    SubjectPage,
)
from retroface.jobs.views import JobView
from retroface.storage.files import is_within

router = APIRouter(prefix="/api/v1", tags=["gallery"])
log = logging.getLogger(__name__)

#: Ids within what both stores hold (PostgreSQL integer): larger ones are a 422, not a 500.
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@router.get("/gallery/subjects", response_model=SubjectPage, summary="Subjects, by reference")
def list_subjects(
    ctx: Ctx,
    caller: Caller,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SubjectPage:
    items = ctx.gallery.list_subjects(caller, offset, limit)
    return SubjectPage(offset=offset, limit=limit, items=items)


@router.get(
    "/gallery/subjects/{ref:path}",
    response_model=SubjectDetail,
    summary="One subject with its images and templates",
)
def show_subject(ref: str, ctx: Ctx, caller: Caller) -> SubjectDetail:
    return ctx.gallery.show(caller, ref)


@router.post(
    "/gallery/subjects/{ref:path}/images",
    status_code=201,
    response_model=EnrolSummary,
    summary="Enrol one reference image for a subject (created if new)",
)
def enrol_image(
    ref: str,
    ctx: Ctx,
    caller: Caller,
    file: Annotated[UploadFile, File()],
    inclusion_reason: Annotated[str | None, Form(max_length=200)] = None,
    source: Annotated[str | None, Form(max_length=200)] = None,
    face: Annotated[int | None, Form(ge=0, le=1000)] = None,
) -> EnrolSummary:
    data = read_upload(file, ctx.settings.max_upload_bytes)
    name = safe_filename(file.filename)
    # Enrolled from memory: the plaintext image is never written to disk (it is stored only
    # encrypted), so a crash mid-enrolment leaves nothing readable behind.
    item = EnrolItem(
        Path(name),
        ref,
        face=face,
        inclusion_reason=inclusion_reason,
        source=source,
        provenance=f"API upload by {caller.username}: {name}",
        data=data,
    )
    summary = ctx.enroller().run(caller, [item])
    if summary.rejected:
        raise InvalidInputError(f"{name}: {summary.rejected[0].reason}")
    return summary


#: Images in one ``POST /gallery/images``: what the enroller commits at once (its batch), so a
#: run sent in such groups leaves the enrolment records a local run leaves.
MAX_UPLOAD_IMAGES = 32


@router.post(
    "/gallery/images",
    response_model=EnrolUploadSummary,
    summary="Enrol several uploaded reference images in one run (the CLI's remote enrolment)",
)
def enrol_images(
    ctx: Ctx,
    caller: Caller,
    files: Annotated[list[UploadFile], File(description="The images, one enrolment each")],
    items: Annotated[
        str,
        Form(
            max_length=60_000,
            description="JSON array of UploadedImageLabels, one per file in the same order",
        ),
    ],
    multi_face: Annotated[Literal["reject", "main"], Form()] = "reject",
    strict_quality: Annotated[bool, Form()] = False,
) -> EnrolUploadSummary:
    """One enrolment run over the uploaded images, as ``retroface gallery enrol`` runs over
    files: an image that cannot be enrolled is a rejection in the summary (status 200), not an
    error; re-sent images are skipped (by content hash). The body limit is the upload limit,
    for all the files together."""
    if not 1 <= len(files) <= MAX_UPLOAD_IMAGES:
        raise InvalidInputError(f"send 1 to {MAX_UPLOAD_IMAGES} images per request")
    try:
        labels = _LABELS.validate_json(items)
    except ValidationError as exc:
        raise InvalidInputError(f"items: {exc.errors()[0]['msg']}") from None
    if len(labels) != len(files):
        raise InvalidInputError(f"items: {len(labels)} entries for {len(files)} files")
    total = 0
    batch = []
    for file, label in zip(files, labels, strict=True):
        data = read_upload(file, ctx.settings.max_upload_bytes - total)
        total += len(data)
        clean_text(label.path, "path", 1024)
        # From memory, like the single upload: the plaintext never touches the server's disk.
        # ``path`` is only a name here (the client's), recorded as a local run records it.
        batch.append(
            EnrolItem(
                Path(label.path),
                label.subject,
                face=label.face,
                inclusion_reason=label.inclusion_reason,
                legal_basis=label.legal_basis,
                source=label.source,
                provenance=label.provenance,
                capture_date=_utc(label.capture_date),
                display_name=label.display_name,
                retention_until=_utc(label.retention_until),
                data=data,
            )
        )
    enroller = ctx.enroller(require_quality=strict_quality, multi_face=multi_face)
    summary = enroller.run(caller, batch)
    return EnrolUploadSummary(
        **summary.model_dump(exclude={"images_per_second"}),
        subject_references=summary.touched_subjects(),
    )


_LABELS = TypeAdapter(list[UploadedImageLabels])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.delete(
    "/gallery/subjects/{ref:path}",
    response_model=ErasureResult,
    summary="Erase a subject: rows, files and index entries",
)
def erase_subject(
    ref: str, ctx: Ctx, caller: Caller, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> ErasureResult:
    return ctx.gallery.erase(caller, ref, reason=reason)


@router.get(
    "/gallery/stats",
    response_model=GalleryStats,
    summary="Gallery size by inclusion reason, source and model",
)
def gallery_stats(ctx: Ctx, caller: Caller) -> GalleryStats:
    return ctx.gallery.stats(caller)


@router.get(
    "/gallery/index",
    response_model=IndexStatus,
    summary="The server's vector index, brought up to the gallery's version",
)
def index_status(ctx: Ctx, caller: Caller) -> IndexStatus:
    """Brings the server's index up to date with the database (after another process enrolled
    or erased: the catch-up through the change log, which a search would otherwise do first) and
    says what it holds and how long that took. Also warms a server that has not searched yet."""
    status = ctx.gallery.index_status(caller, ctx.engine.identity.key)
    log.info(
        "index at gallery version %d (%d templates), current in %.1f ms",
        status.version,
        status.templates,
        status.seconds * 1000,
    )
    return status


@router.post(
    "/gallery/enrolments",
    response_model=JobView,
    status_code=202,
    summary="Batch enrolment from RETROFACE_IMPORT_DIR as a background job",
)
def batch_enrol(body: EnrolmentRequest, ctx: Ctx, caller: Caller) -> JobView:
    return submit_enrolment(ctx, caller, body)


def submit_enrolment(ctx: AppContext, caller: Principal, body: EnrolmentRequest) -> JobView:
    """Check a batch enrolment request against the import folder and start its job (the API
    route and the admin's gallery page both submit through here)."""
    root = ctx.settings.import_dir
    if root is None:
        raise PermissionDeniedError("batch import over the API is off: set RETROFACE_IMPORT_DIR")
    optional_text(body.inclusion_reason, "inclusion reason", 200)
    optional_text(body.source, "source", 200)
    for p in body.paths:
        clean_text(p, "path", 1024)
        # realpath: a link inside the folder to anything outside it is outside (checked again
        # when the job runs, and on each file as it is opened, since links can change)
        if not is_within(root / p, root):
            raise InvalidInputError(f"{p}: outside the import folder once links are followed")
        try:
            found = (root / p).exists()
        except OSError:  # e.g. a name longer than the file system allows
            found = False
        if not found:
            raise InvalidInputError(f"{p}: not found in the import folder")
    payload = body.model_dump() | {"actor": caller.username}
    job_id = ctx.jobs.submit("gallery.enrol", payload, caller.username)
    return ctx.job_store.get(job_id)


@router.get("/jobs", response_model=list[JobView], summary="Recent background jobs")
def list_jobs(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobView]:
    return ctx.job_store.list(limit, offset)


@router.get("/jobs/{job_id}", response_model=JobView, summary="A job's status and progress")
def get_job(job_id: JobId, ctx: Ctx) -> JobView:
    return ctx.job_store.get(job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobView, summary="Ask a job to stop")
def cancel_job(job_id: JobId, ctx: Ctx) -> JobView:
    return ctx.job_store.cancel(job_id)
