"""Gallery enrolment (single upload and batch job), listing, erasure and jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import EnrolmentRequest
from retroface.api.uploads import read_upload
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.core.text import MAX_ID, MAX_OFFSET, clean_text, optional_text, safe_filename
from retroface.gallery.enrol import EnrolItem
from retroface.gallery.views import (
    EnrolSummary,
    ErasureResult,
    GalleryStats,
    SubjectDetail,
    SubjectPage,
)
from retroface.jobs.views import JobView
from retroface.storage.files import is_within

router = APIRouter(prefix="/api/v1", tags=["gallery"])

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
