"""Footage pages: scan an uploaded video under a case, pick a face track, search it.

The scan (:meth:`FootageSearch.scan_upload`) decodes the video from memory and keeps each track's
best shot in memory too, so it runs in a thread of this server process and its result stays
here until the operator searches a track (:meth:`FootageSearch.search_track` then stores that
track's best shot as a probe, audited, like any search). The page polls a small status fragment
with htmx while the scan runs (and offers a "check again" link without script). Why not the job
queue: a job's result is JSON in the jobs table and holds no pixels or embeddings by design
(docs/video.md); a track's best shot and fused template must not be written anywhere before the
operator chooses to search it. The cost: a scan belongs to the server process that ran it (one
uvicorn worker, or sticky sessions) and is forgotten after an hour
(:data:`retroface.web.scans.KEEP_S`) or a restart.

Best shots reach the browser through the face-image service
(:meth:`FaceImages.footage_face`: the case's operators only, every view audited), blurred until
the operator picks a track, as a probe's faces are.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.api.uploads import read_upload
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import NotFoundError, RetrofaceError
from retroface.core.text import case_reference, safe_filename
from retroface.search.service import ProbeProvenance
from retroface.web.render import render
from retroface.web.routes.casework import case_url, render_case
from retroface.web.scans import clock_time, scans_of

router = APIRouter(prefix="/ui", include_in_schema=False)

ScanId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TrackId = Annotated[int, PathParam(ge=0, le=1_000_000)]


@router.post("/cases/{ref:path}/footage", response_class=HTMLResponse)
def upload_footage(
    request: Request,
    ref: str,
    ctx: Ctx,
    caller: Caller,
    source: Annotated[str, Form(max_length=200)] = "",
    how_obtained: Annotated[str, Form(max_length=500)] = "",
    video: Annotated[UploadFile | None, File()] = None,
) -> Response:
    ref = case_reference(ref)
    # Checked now, before the thread: a refusal is a page of its own (and audited).
    ctx.footage.require_searchable_case(caller, ref, action="video.scan")
    provenance = ProbeProvenance(source, how_obtained)
    if video is None or not video.filename:
        message = "choose a video file to scan"
        return _case_error(request, ctx, caller, ref, message, source, how_obtained)
    try:
        provenance.check()
    except RetrofaceError as exc:
        return _case_error(request, ctx, caller, ref, exc.message, source, how_obtained)
    data = read_upload(video, ctx.settings.max_upload_bytes)
    job = scans_of(request).start(ctx, caller, ref, data, safe_filename(video.filename), provenance)
    return RedirectResponse(f"/ui/footage/{job.id}", status_code=303)


def _case_error(
    request: Request,
    ctx: AppContext,
    caller: Principal,
    ref: str,
    message: str,
    source: str,
    how_obtained: str,
) -> Response:
    return render_case(
        request,
        ctx,
        caller,
        ref,
        status_code=422,
        failed=[("", message)],
        footage_form={"source": source, "how_obtained": how_obtained},
    )


@router.get("/footage/{scan_id}", response_class=HTMLResponse)
def footage_page(
    request: Request,
    scan_id: ScanId,
    caller: Caller,
    track: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
) -> Response:
    job = scans_of(request).get(caller, scan_id)
    tracks = job.scan.tracks if job.scan else []
    if track is not None and track not in {t.id for t in tracks}:
        track = None
    return render(
        request,
        "footage.html",
        job=job,
        tracks=tracks,
        picked=track,
        clock_time=clock_time,
        case_url=case_url,
    )


@router.get("/footage/{scan_id}/status", response_class=HTMLResponse)
def footage_status(request: Request, scan_id: ScanId, caller: Caller) -> Response:
    """The progress fragment the page polls; once the scan is done, htmx reloads the page."""
    job = scans_of(request).get(caller, scan_id)
    response = render(request, "footage_status.html", job=job, clock_time=clock_time)
    if job.done:
        response.headers["HX-Refresh"] = "true"
    return response


@router.get("/footage/{scan_id}/tracks/{track}.jpg")
def track_face(
    request: Request,
    scan_id: ScanId,
    track: TrackId,
    ctx: Ctx,
    caller: Caller,
    veiled: Annotated[bool, Query()] = False,
) -> Response:
    job = scans_of(request).get(caller, scan_id)
    if job.scan is None:
        raise NotFoundError(f"footage scan {scan_id} has no tracks yet")
    best = job.scan.track(track).best
    if best.frame is None:
        raise NotFoundError(f"track {track} kept no frame for its best shot")
    x1, y1, x2, y2 = (float(v) for v in best.face.box)
    details = {
        "view": "track",
        "video": job.name,
        "sha256": job.scan.extra.get("sha256"),
        "track": track,
        "t": round(best.sighting.t, 3),
    }
    image = ctx.faces.footage_face(
        caller, job.case, best.frame, (x1, y1, x2, y2), details=details, veiled=veiled
    )
    return Response(
        content=image.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"}
    )


@router.post("/footage/{scan_id}/tracks/{track}/search")
def search_track(
    request: Request,
    scan_id: ScanId,
    track: TrackId,
    ctx: Ctx,
    caller: Caller,
    top_k: Annotated[int, Form(ge=1, le=200)] = 20,
) -> Response:
    job = scans_of(request).get(caller, scan_id)
    if job.scan is None:
        raise NotFoundError(f"footage scan {scan_id} is not finished")
    result = ctx.footage.search_track(
        caller,
        job.case,
        job.scan,
        track,
        job.provenance,
        top_k=top_k,
        video_sha256=str(job.scan.extra.get("sha256")),
    )
    return RedirectResponse(f"/ui/searches/{result.search_id}", status_code=303)
