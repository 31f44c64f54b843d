"""The administrator's pages: the gallery (statistics, batch enrolment from the import folder with
a live progress bar, subject search and erasure with a reason) and the user accounts.

Everything goes through the services the API uses: :class:`GalleryService` (reads audited,
erasure audited with its reason), the API's own batch-enrolment check and job submission
(:func:`retroface.api.routers.gallery.submit_enrolment`: the import folder's rules are stated
once), the job store (as ``GET /api/v1/jobs/{id}``) and :class:`UserService`.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.api.routers.gallery import submit_enrolment
from retroface.api.schemas import EnrolmentRequest
from retroface.core.errors import InvalidInputError, RetrofaceError
from retroface.core.roles import ROLE_DESCRIPTIONS, Role
from retroface.core.text import MAX_ID
from retroface.jobs.views import TERMINAL
from retroface.web.render import render
from retroface.web.routes.review import form_status

router = APIRouter(prefix="/ui", include_in_schema=False)

#: At most this many entries of the import folder are offered on the page.
MAX_IMPORT_ENTRIES = 500


def _import_entries(ctx: Ctx) -> list[str]:
    """The import folder's top-level entries (folders first), for the enrolment form."""
    root = ctx.settings.import_dir
    if root is None or not root.is_dir():
        return []
    try:
        entries = sorted(root.iterdir(), key=lambda p: (not p.is_dir(), p.name))
    except OSError:
        return []
    return [p.name for p in entries if not p.name.startswith(".")][:MAX_IMPORT_ENTRIES]


def _gallery_page(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    status_code: int = 200,
    error: str | None = None,
    job_id: int | None = None,
    flash: str | None = None,
) -> Response:
    is_admin = caller.has_role(Role.ADMIN)
    return render(
        request,
        "gallery.html",
        status_code=status_code,
        stats=ctx.gallery.stats(caller),
        import_dir=ctx.settings.import_dir,
        entries=_import_entries(ctx) if is_admin else [],
        jobs=ctx.job_store.list(10, 0) if is_admin else [],
        is_admin=is_admin,
        error=error,
        job_id=job_id,
        flash=flash,
    )


@router.get("/gallery", response_class=HTMLResponse)
def gallery(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    job: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    erased: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    flash = f"Subject {erased} was erased from the gallery." if erased else None
    return _gallery_page(request, ctx, caller, job_id=job, flash=flash)


@router.post("/gallery/enrolments", response_class=HTMLResponse)
def enrol(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    paths: Annotated[list[str] | None, Form()] = None,
    inclusion_reason: Annotated[str, Form(max_length=200)] = "",
    source: Annotated[str, Form(max_length=200)] = "",
    multi_face: Annotated[Literal["reject", "main"], Form()] = "reject",
    strict_quality: Annotated[bool, Form()] = False,
) -> Response:
    try:
        if not paths:
            raise InvalidInputError("choose at least one folder or file of the import folder")
        body = EnrolmentRequest(
            paths=paths,
            inclusion_reason=inclusion_reason.strip() or None,
            source=source.strip() or None,
            multi_face=multi_face,
            strict_quality=strict_quality,
        )
        job = submit_enrolment(ctx, caller, body)
    except RetrofaceError as exc:
        return _gallery_page(request, ctx, caller, form_status(exc), exc.message)
    return RedirectResponse(f"/ui/gallery?job={job.id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_progress(
    job_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], request: Request, ctx: Ctx, caller: Caller
) -> Response:
    """A job's progress: the fragment htmx polls while the job runs (a whole page otherwise)."""
    job = ctx.job_store.get(job_id)
    fragment = request.headers.get("HX-Request") == "true"
    return render(
        request,
        "job_progress.html" if fragment else "job_page.html",
        job=job,
        done=job.status in TERMINAL,
    )


@router.get("/gallery/subjects", response_class=HTMLResponse)
def subjects(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    q: Annotated[str, Query(max_length=100)] = "",
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    items = ctx.gallery.list_subjects(caller, offset, 50, query=q or None)
    return render(
        request,
        "subjects.html",
        items=items,
        q=q,
        offset=offset,
        is_admin=caller.has_role(Role.ADMIN),
    )


@router.get("/gallery/subjects/{ref:path}", response_class=HTMLResponse)
def subject(ref: str, request: Request, ctx: Ctx, caller: Caller) -> Response:
    """One subject with its reference faces: what an admin checks before erasing."""
    return render(
        request,
        "subject.html",
        subject=ctx.gallery.show(caller, ref),
        is_admin=caller.has_role(Role.ADMIN),
        blur_all=ctx.settings.blur_all_faces,
    )


@router.get("/faces/gallery/{image_id}.jpg")
def reference_face(
    image_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], ctx: Ctx, caller: Caller
) -> Response:
    face = ctx.faces.reference_face(caller, image_id)
    return Response(
        content=face.jpeg,
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.post("/gallery/subjects/{ref:path}/erase", response_class=HTMLResponse)
def erase(
    ref: str,
    request: Request,
    ctx: Ctx,
    caller: Caller,
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    try:
        if not reason.strip():
            raise InvalidInputError("say why this subject is erased (the reason is recorded)")
        ctx.gallery.erase(caller, ref, reason=reason)
    except RetrofaceError as exc:
        if exc.code == "not_found":
            raise
        items = ctx.gallery.list_subjects(caller, 0, 50, query=ref)
        return render(
            request,
            "subjects.html",
            status_code=form_status(exc),
            items=items,
            q=ref,
            offset=0,
            is_admin=True,
            error=exc.message,
        )
    return RedirectResponse(f"/ui/gallery?erased={quote(ref, safe='')}", status_code=303)


# ---------------------------------------------------------------------- users


def _users_page(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
    flash: str | None = None,
) -> Response:
    return render(
        request,
        "users.html",
        status_code=status_code,
        users=ctx.users.list(caller),
        roles=ROLE_DESCRIPTIONS,
        is_admin=caller.has_role(Role.ADMIN),
        error=error,
        form=form or {},
        flash=flash,
    )


@router.get("/users", response_class=HTMLResponse)
def users(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    done: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    return _users_page(request, ctx, caller, flash=done)


@router.post("/users", response_class=HTMLResponse)
def add_user(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    username: Annotated[str, Form(max_length=200)] = "",
    display_name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    roles: Annotated[list[str] | None, Form()] = None,
) -> Response:
    form = {"username": username, "display_name": display_name}
    try:
        if not roles:
            raise InvalidInputError("give the account at least one role")
        ctx.users.add(
            caller, username.strip(), roles, password or None, display_name.strip() or None
        )
    except RetrofaceError as exc:
        return _users_page(request, ctx, caller, form_status(exc), exc.message, form)
    done = quote(f"Account {username.strip()} created.")
    return RedirectResponse(f"/ui/users?done={done}", status_code=303)


@router.post("/users/{username}/disable", response_class=HTMLResponse)
def disable_user(username: str, request: Request, ctx: Ctx, caller: Caller) -> Response:
    try:
        ctx.users.disable(caller, username)
    except RetrofaceError as exc:
        if exc.code == "not_found":
            raise
        return _users_page(request, ctx, caller, form_status(exc), exc.message)
    done = quote(f"Account {username} disabled; its sessions and tokens no longer work.")
    return RedirectResponse(f"/ui/users?done={done}", status_code=303)
