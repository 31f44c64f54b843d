"""Gallery enrolment (single upload and batch job), listing, erasure and jobs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import EnrolmentRequest, JobOut, Page
from retroface.api.uploads import read_upload
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.gallery.enrol import EnrolItem

router = APIRouter(prefix="/api/v1", tags=["gallery"])


@router.get("/gallery/subjects", response_model=Page, summary="Subjects, by reference")
def list_subjects(
    ctx: Ctx,
    caller: Caller,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    items = ctx.gallery.list_subjects(caller, offset, limit)
    return {"offset": offset, "limit": limit, "items": items}


@router.get("/gallery/subjects/{ref}", summary="One subject with its images and templates")
def show_subject(ref: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return ctx.gallery.show(caller, ref)


@router.post(
    "/gallery/subjects/{ref}/images",
    status_code=201,
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
) -> dict[str, Any]:
    data = read_upload(file, ctx.settings.max_upload_bytes)
    name = Path(file.filename or "upload").name or "upload"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        enroller = ctx.enroller()
        item = EnrolItem(
            path,
            ref,
            face=face,
            inclusion_reason=inclusion_reason,
            source=source,
            provenance=f"API upload by {caller.username}: {name}",
        )
        summary = enroller.run(caller, [item])
    if summary.rejected:
        raise InvalidInputError(f"{name}: {summary.rejected[0]['reason']}")
    return summary.to_dict()


@router.delete("/gallery/subjects/{ref}", summary="Erase a subject: rows, files and index entries")
def erase_subject(
    ref: str, ctx: Ctx, caller: Caller, reason: Annotated[str, Query(min_length=1, max_length=500)]
) -> dict[str, Any]:
    result = ctx.gallery.erase(caller, ref, reason=reason)
    return result.to_dict()


@router.get("/gallery/stats", summary="Gallery size by inclusion reason, source and model")
def gallery_stats(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return ctx.gallery.stats(caller)


@router.post(
    "/gallery/enrolments",
    response_model=JobOut,
    status_code=202,
    summary="Batch enrolment from RETROFACE_IMPORT_DIR as a background job",
)
def batch_enrol(body: EnrolmentRequest, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    root = ctx.settings.import_dir
    if root is None:
        raise PermissionDeniedError("batch import over the API is off: set RETROFACE_IMPORT_DIR")
    root = root.resolve()
    for p in body.paths:
        target = (root / p).resolve()
        if not target.is_relative_to(root):
            raise InvalidInputError(f"{p}: outside the import folder")
        if not target.exists():
            raise InvalidInputError(f"{p}: not found in the import folder")
    payload = body.model_dump() | {"actor": caller.username}
    job_id = ctx.jobs.submit("gallery.enrol", payload, caller.username)
    return ctx.job_store.get(job_id)


@router.get("/jobs", response_model=list[JobOut], summary="Recent background jobs")
def list_jobs(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    return ctx.job_store.list(limit, offset)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A job's status and progress")
def get_job(job_id: int, ctx: Ctx) -> dict[str, Any]:
    return ctx.job_store.get(job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Ask a job to stop")
def cancel_job(job_id: int, ctx: Ctx) -> dict[str, Any]:
    return ctx.job_store.cancel(job_id)
