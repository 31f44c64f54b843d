"""Sign-in, sign-out and the start page."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.core.errors import RetrofaceError
from retroface.web.render import render
from retroface.web.session import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    new_login_csrf,
    session_token,
)

router = APIRouter(prefix="/ui", include_in_schema=False)


#: Where sign-in may send the browser afterwards: a page of this server, nothing else.
def _safe_next(value: str | None) -> str:
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_csrf()
    response = render(request, "login.html", csrf=token, next=_safe_next(next))
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/ui",
        secure=_secure(request),
    )
    return response


def _secure(request: Request) -> bool:
    secure: bool = request.app.state.ctx.settings.secure_cookies
    return secure


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
) -> Response:
    client = request.client.host if request.client else None
    try:
        principal = ctx.users.authenticate_password(username, password, client=client)
        hours = ctx.settings.web_session_hours
        token = ctx.users.issue_token(
            principal, principal.username, name="web session", ttl=timedelta(hours=hours)
        )
    except RetrofaceError as exc:
        status = 429 if exc.code == "too_many_attempts" else 401
        message = str(exc) if status == 429 else "Unknown username or wrong password."
        return render(
            request,
            "login.html",
            status_code=status,
            error=message,
            username=username[:100],
            next=_safe_next(next),
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/ui",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui")
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx, caller: Caller) -> Response:
    token = session_token(request)
    if token:
        ctx.users.revoke_token(caller, token)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, caller: Caller) -> Response:
    return render(request, "home.html")
