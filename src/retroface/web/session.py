"""Sign-in by session cookie, and the CSRF token that every form and htmx request carries.

The cookie holds an ordinary API token issued to the user at sign-in (``name="web session"``,
lifetime ``RETROFACE_WEB_SESSION_HOURS``), so a session is revoked, expires and is audited like
any token, and the gate authenticates it with the same code. The cookie is HttpOnly (no script
can read it), SameSite=Strict (no other site's page can make the browser send it) and Secure by
default (``RETROFACE_SECURE_COOKIES=false`` only for plain-HTTP trials on a private network;
browsers treat ``localhost`` as secure). The CSRF token is an HMAC of the session token, so it
needs no storage and dies with the session; the login form, which has no session yet, uses a
double-submit cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request

from retroface.core.errors import PermissionDeniedError

SESSION_COOKIE = "rf_session"
LOGIN_CSRF_COOKIE = "rf_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CsrfError(PermissionDeniedError):
    """A state-changing request without the form's token, or from another origin (HTTP 403)."""

    code = "forbidden"


def session_token(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def csrf_for(token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 keyed by the session's secret token."""
    return hmac.new(token.encode(), b"retroface-csrf", hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_expected(request: Request) -> str | None:
    """The token a form posted by this browser must carry (None: no session, no login cookie)."""
    token = session_token(request)
    if token:
        return csrf_for(token)
    return request.cookies.get(LOGIN_CSRF_COOKIE) or None


def check_origin(request: Request) -> None:
    """Refuse a state-changing request whose Origin (or Referer) names another site.

    Belt and braces behind SameSite=Strict and the token: browsers send Origin on every POST.
    """
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return
    parts = urlsplit(origin)
    if parts.netloc and parts.netloc != request.headers.get("host", ""):
        raise CsrfError("refused: this form was posted from another site")


async def csrf_guard(request: Request) -> None:
    """Router dependency for every page: unsafe methods need the session's CSRF token.

    Async only to read the form (Starlette caches it, so the route's own ``Form`` parameters see
    the same parsed body); the routes themselves stay synchronous.
    """
    if request.method not in UNSAFE:
        return
    check_origin(request)
    expected = csrf_expected(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise CsrfError("refused: the form's security token is missing or out of date; reload it")
