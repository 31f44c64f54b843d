"""Footage pages: scan an uploaded video under a case, pick a face track, search it.

The scan (:meth:`FootageSearch.scan_upload`) decodes the video from memory and keeps each track's
best shot in memory too, so it runs in a thread of this server process and its result stays
here until the operator searches a track (:meth:`FootageSearch.search_track` then stores that
track's best shot as a probe, audited, like any search). The page polls a small status fragment
with htmx while the scan runs (and offers a "check again" link without script). Why not the job
queue: a job's result is JSON in the jobs table and holds no pixels or embeddings by design
(docs/video.md); a track's best shot and fused template must not be written anywhere before the
operator chooses to search it. The cost: a scan belongs to the server process that ran it (one
uvicorn worker, or sticky sessions) and is forgotten after :data:`KEEP_S` or a restart.

Best shots reach the browser through the face-image service
(:meth:`FaceImages.footage_face`: the case's operators only, every view audited), blurred until
the operator picks a track, as a probe's faces are.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
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
from retroface.media.footage import VideoScan
from retroface.media.video import VideoLoadError
from retroface.search.service import ProbeProvenance
from retroface.web.render import render
from retroface.web.routes.casework import case_url, render_case

router = APIRouter(prefix="/ui", include_in_schema=False)

#: How long a finished scan is kept for its operator to pick a track, and how many at most.
KEEP_S = 3600.0
MAX_SCANS = 8
ScanId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TrackId = Annotated[int, PathParam(ge=0, le=1_000_000)]


@dataclass
class FootageScan:
    """One uploaded video being scanned, or scanned, for one operator under one case."""

    id: str
    owner: int
    case: str
    name: str
    provenance: ProbeProvenance
    created: float = field(default_factory=time.monotonic)
    seconds: float = 0.0  # of footage decoded so far
    duration: float | None = None
    scan: VideoScan | None = None
    error: str | None = None
    done: bool = False

    def progress(self, t: float, duration: float | None) -> None:
        self.seconds, self.duration = t, duration

    @property
    def percent(self) -> int:
        if self.done:
            return 100
        if not self.duration:
            return 0
        return max(0, min(99, int(100 * self.seconds / self.duration)))


class FootageScans:
    """This process's footage scans, by an unguessable id; each visible to its operator only."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scans: dict[str, FootageScan] = {}

    def start(
        self,
        ctx: AppContext,
        caller: Principal,
        ref: str,
        data: bytes,
        name: str,
        p: ProbeProvenance,
    ) -> FootageScan:
        job = FootageScan(secrets.token_urlsafe(16), caller.id, ref, name, p)
        with self.lock:
            self._expire()
            self.scans[job.id] = job

        def run() -> None:
            try:
                job.scan = ctx.footage.scan_upload(
                    caller, ref, data, name, p, progress=job.progress
                )
            except (RetrofaceError, VideoLoadError) as exc:
                job.error = getattr(exc, "message", None) or str(exc)
            except Exception as exc:  # a thread has no one else to tell
                job.error = f"the scan failed: {type(exc).__name__}"
            finally:
                job.done = True

        threading.Thread(target=run, name=f"retroface-footage-{job.id[:6]}", daemon=True).start()
        return job

    def get(self, caller: Principal, scan_id: str) -> FootageScan:
        with self.lock:
            self._expire()
            job = self.scans.get(scan_id)
        # another operator's scan is "not found", not "forbidden": its id says nothing
        if job is None or job.owner != caller.id:
            raise NotFoundError(f"no footage scan {scan_id} (scans are kept for an hour)")
        return job

    def _expire(self) -> None:
        now = time.monotonic()
        for key, job in list(self.scans.items()):
            if job.done and now - job.created > KEEP_S:
                del self.scans[key]
        finished = sorted((j for j in self.scans.values() if j.done), key=lambda j: j.created)
        while len(self.scans) >= MAX_SCANS and finished:
            del self.scans[finished.pop(0).id]


_registry_lock = threading.Lock()


def scans_of(request: Request) -> FootageScans:
    with _registry_lock:
        registry: FootageScans | None = getattr(request.app.state, "footage_scans", None)
        if registry is None:
            registry = request.app.state.footage_scans = FootageScans()
        return registry


def clock_time(seconds: float) -> str:
    """A time in the footage as a player shows it: ``1:02.4``."""
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{rest:04.1f}"


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
