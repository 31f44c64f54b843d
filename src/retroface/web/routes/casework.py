"""The operator's pages: cases, probe uploads, picking a face, searching, candidate lists.

Every page calls the same domain services as the REST API (``api/routers/casework.py``) with the
signed-in principal, so role, need-to-know, the case's authorisation and the audit trail are the
services' — a page never reads the database itself. Face images reach the browser only through
the face-image service (:class:`retroface.search.faces.FaceImages`), which checks need-to-know and
audits every view, and are never cached.

Case references may contain "/" (``CR/123/26``): they travel in the path as ``{ref:path}``, with
the routes that have a suffix (``/probes``, ``/decision``) declared before the plain one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.api.uploads import read_upload
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import RetrofaceError
from retroface.core.roles import Role
from retroface.core.status import CaseStatus
from retroface.core.text import MAX_ID, safe_filename
from retroface.governance.views import CaseView
from retroface.media.images import ImageLoadError
from retroface.search.service import ProbeProvenance
from retroface.search.views import FaceImage, FaceView
from retroface.web.render import render
from retroface.web.scans import clock_time, scans_of

router = APIRouter(prefix="/ui", include_in_schema=False)

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
FaceIndex = Annotated[int, PathParam(ge=0, le=10_000)]
#: The most probe images one upload may carry; the body limit (RETROFACE_MAX_UPLOAD_BYTES)
#: bounds their total size as well.
MAX_FILES = 20


def case_url(reference: str) -> str:
    """A case page's URL; "/" stays a separator (the route takes ``{ref:path}``)."""
    return "/ui/cases/" + quote(reference, safe="/")


def time_left(deadline: datetime | None, now: datetime) -> str | None:
    """``"5 h 12 min"`` until ``deadline`` by the injected clock; ``"ended"`` once past."""
    if deadline is None:
        return None
    left = deadline - now
    if left <= timedelta(0):
        return "ended"
    minutes = int(left.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def may_upload(case: CaseView, principal: Principal | None) -> bool:
    """Whether to offer the upload form: an operator, on a case that is approved or urgent and
    pending. Only a hint for the page; the search service decides (and audits a refusal)."""
    if principal is None or not principal.has_role(Role.OPERATOR):
        return False
    return case.status == CaseStatus.APPROVED or (case.status == CaseStatus.PENDING and case.urgent)


def where(face: FaceView, width: int, height: int) -> str:
    """Where a face is in its image, in words, so a face can be picked while all are blurred."""
    if not face.box or width <= 0 or height <= 0:
        return ""
    x = (face.box[0] + face.box[2]) / 2 / width
    y = (face.box[1] + face.box[3]) / 2 / height
    # fifths across: two people side by side in the middle of a photo are told apart
    across = ("left", "centre left", "centre", "centre right", "right")[min(int(x * 5), 4)]
    down = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    return f"{down} {across}"


def _jpeg(image: FaceImage) -> Response:
    return Response(
        content=image.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"}
    )


# ----------------------------------------------------------------------------- cases


@router.get("/cases", response_class=HTMLResponse)
def cases(request: Request, ctx: Ctx, caller: Caller) -> Response:
    found = ctx.cases.list_cases(caller)
    now = ctx.clock()
    left = {c.reference: time_left(c.urgent_deadline, now) for c in found if c.urgent}
    return render(
        request,
        "cases.html",
        cases=found,
        left=left,
        case_url=case_url,
        can_open=caller.has_role(Role.OPERATOR),
    )


@router.get("/cases/new", response_class=HTMLResponse)
def new_case(request: Request, ctx: Ctx, caller: Caller) -> Response:
    return render(request, "case_new.html", categories=ctx.policy.offence_categories, form={})


@router.post("/cases", response_class=HTMLResponse)
def open_case(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    reference: Annotated[str, Form(max_length=200)],
    offence_category: Annotated[str, Form(max_length=200)],
    purpose: Annotated[str, Form(max_length=5000)],
    justification: Annotated[str, Form(max_length=5000)],
    urgent: Annotated[bool, Form()] = False,
) -> Response:
    try:
        case = ctx.cases.open(
            caller, reference, offence_category, purpose, justification, urgent=urgent
        )
    except RetrofaceError as exc:
        if exc.code == "forbidden":
            raise
        form = {
            "reference": reference,
            "offence_category": offence_category,
            "purpose": purpose,
            "justification": justification,
            "urgent": urgent,
        }
        return render(
            request,
            "case_new.html",
            status_code=409 if exc.code == "conflict" else 422,
            categories=ctx.policy.offence_categories,
            form=form,
            flash=exc.message,
            flash_kind="error",
        )
    return RedirectResponse(case_url(case.reference), status_code=303)


@router.post("/cases/{ref:path}/probes", response_class=HTMLResponse)
def add_probes(
    request: Request,
    ref: str,
    ctx: Ctx,
    caller: Caller,
    source: Annotated[str, Form(max_length=200)] = "",
    how_obtained: Annotated[str, Form(max_length=500)] = "",
    files: Annotated[list[UploadFile] | None, File()] = None,
) -> Response:
    """Each file becomes its own audited probe; one that fails is reported, the others go on."""
    chosen = [f for f in files or [] if f.filename]
    provenance = ProbeProvenance(source, how_obtained)
    added: list[tuple[str, int, int]] = []  # name, probe id, faces
    failed: list[tuple[str, str]] = []  # name, why
    if not chosen:
        failed.append(("", "choose at least one image to upload"))
    elif len(chosen) > MAX_FILES:
        failed.append(("", f"at most {MAX_FILES} images at once; upload the rest afterwards"))
        chosen = []
    for upload in chosen:
        name = safe_filename(upload.filename)
        try:
            data = read_upload(upload, ctx.settings.max_upload_bytes)
            probe = ctx.searches.add_probe(caller, ref, data, name, provenance)
        except ImageLoadError as exc:
            failed.append((name, f"not an image this system can read ({exc})"))
        except RetrofaceError as exc:
            if exc.code in ("forbidden", "not_found") and not added:
                raise  # not the caller's case: the page itself is refused, not one file
            failed.append((name, exc.message))
        else:
            added.append((name, probe.probe_id, len(probe.faces)))
    if not failed:
        if len(added) == 1:
            return RedirectResponse(f"/ui/probes/{added[0][1]}", status_code=303)
        return RedirectResponse(case_url(ref), status_code=303)
    return render_case(
        request,
        ctx,
        caller,
        ref,
        status_code=200 if added else 422,
        added=added,
        failed=failed,
        form={"source": source, "how_obtained": how_obtained},
    )


@router.get("/cases/{ref:path}", response_class=HTMLResponse)
def case_page(request: Request, ref: str, ctx: Ctx, caller: Caller) -> Response:
    return render_case(request, ctx, caller, ref)


def render_case(
    request: Request,
    ctx: AppContext,
    caller: Principal,
    ref: str,
    status_code: int = 200,
    **extra: object,
) -> Response:
    case = ctx.cases.show(caller, ref)
    probes = ctx.searches.case_probes(caller, case.reference)
    scans = scans_of(request).of_case(caller, case.reference)
    context: dict[str, object] = {"form": {}, "footage_form": {}, "added": [], "failed": []}
    context.update(extra)
    return render(
        request,
        "case.html",
        status_code=status_code,
        case=case,
        probes=probes,
        left=time_left(case.urgent_deadline, ctx.clock()) if case.urgent else None,
        upload=may_upload(case, caller),
        case_url=case_url,
        max_files=MAX_FILES,
        scans=scans,
        clock_time=clock_time,
        max_mb=ctx.settings.max_upload_bytes // 1_000_000,
        **context,
    )


# ----------------------------------------------------------------------------- probes


@router.get("/probes/{probe_id}", response_class=HTMLResponse)
def probe_page(
    request: Request,
    probe_id: Id,
    ctx: Ctx,
    caller: Caller,
    face: Annotated[int | None, Query(ge=0, le=10_000)] = None,
) -> Response:
    """Privacy mode: every face blurred until one is picked (``?face=n``); then only that one
    is shown clearly and may be searched."""
    probe = ctx.searches.probe(caller, probe_id)
    indexes = {f.face for f in probe.faces}
    if face is not None and face not in indexes:
        face = None
    if face is None and len(probe.faces) == 1:
        face = probe.faces[0].face  # one face: nothing to keep private from the operator
    return render(
        request,
        "probe.html",
        probe=probe,
        picked=face,
        where={f.face: where(f, probe.width, probe.height) for f in probe.faces},
        case_url=case_url,
        can_search=caller.has_role(Role.OPERATOR),
    )


@router.post("/probes/{probe_id}/search", response_class=HTMLResponse)
def search(
    request: Request,
    probe_id: Id,
    ctx: Ctx,
    caller: Caller,
    case: Annotated[str, Form(max_length=200)],
    face: Annotated[int, Form(ge=0, le=10_000)],
    top_k: Annotated[int, Form(ge=1, le=200)] = 20,
) -> Response:
    result = ctx.searches.search(caller, case, probe_id, face, top_k)
    return RedirectResponse(f"/ui/searches/{result.search_id}", status_code=303)


# ----------------------------------------------------------------------------- searches


@router.get("/searches/{search_id}", response_class=HTMLResponse)
def search_page(request: Request, search_id: Id, ctx: Ctx, caller: Caller) -> Response:
    result = ctx.searches.get_search(caller, search_id)
    return render(
        request,
        "search.html",
        result=result,
        case_url=case_url,
        can_export=caller.has_role(Role.OPERATOR, Role.AUDITOR),
    )


@router.get("/searches/{search_id}/export", response_class=HTMLResponse)
def export_page(request: Request, search_id: Id, ctx: Ctx, caller: Caller) -> Response:
    """The disclosure package as a printable page (the API serves it as JSON)."""
    package = ctx.searches.export(caller, search_id)
    return render(request, "export.html", package=package, case_url=case_url)


# ----------------------------------------------------------------------------- face images


@router.get("/faces/probes/{probe_id}/image.jpg")
def probe_image(
    probe_id: Id,
    ctx: Ctx,
    caller: Caller,
    keep: Annotated[int | None, Query(ge=0, le=10_000)] = None,
) -> Response:
    """The whole probe, every face blurred but ``keep`` (none: all blurred)."""
    return _jpeg(ctx.faces.probe_image(caller, probe_id, keep, max_side=1280))


@router.get("/faces/probes/{probe_id}/faces/{face}.jpg")
def probe_face(
    probe_id: Id,
    face: FaceIndex,
    ctx: Ctx,
    caller: Caller,
    veiled: Annotated[bool, Query()] = False,
) -> Response:
    """One face of a probe; ``veiled``: blurred too (a face not yet picked)."""
    return _jpeg(ctx.faces.probe_face(caller, probe_id, face, blur_all=veiled))


@router.get("/faces/searches/{search_id}/probe.jpg")
def search_probe_face(search_id: Id, ctx: Ctx, caller: Caller) -> Response:
    return _jpeg(ctx.faces.search_probe_face(caller, search_id))


@router.get("/faces/searches/{search_id}/candidates/{rank}.jpg")
def candidate_face(
    search_id: Id, rank: Annotated[int, PathParam(ge=1, le=200)], ctx: Ctx, caller: Caller
) -> Response:
    return _jpeg(ctx.faces.candidate_face(caller, search_id, rank))
