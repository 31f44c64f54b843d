"""Rendering pages: one Jinja2 environment, the signed-in principal and role-aware navigation.

Templates autoescape everything (names, notes and file names are user input). Every page gets
the principal, the navigation its roles allow, the CSRF token for its forms and the lead label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from retroface import __version__
from retroface.core.access import Principal
from retroface.core.labels import LEAD_LABEL
from retroface.core.roles import Role
from retroface.web.access import WEB_MATRIX
from retroface.web.session import CSRF_FIELD, CSRF_HEADER, csrf_expected

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(
    lead_label=LEAD_LABEL, version=__version__, csrf_field=CSRF_FIELD, csrf_header=CSRF_HEADER
)


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    roles: frozenset[Role]


#: The navigation, in the order shown. An entry appears only to roles the page allows and only
#: once the page exists (is declared in the web matrix), so the menu never offers a 403.
NAV: tuple[tuple[str, str], ...] = (
    ("Cases", "/ui/cases"),
    ("Authorisations", "/ui/authorisations"),
    ("Review queue", "/ui/reviews"),
    ("Audit log", "/ui/audit"),
    ("Reports", "/ui/reports"),
    ("Oversight", "/ui/oversight"),
    ("Gallery", "/ui/gallery"),
    ("Users", "/ui/users"),
)


def nav_for(principal: Principal | None) -> list[NavItem]:
    if principal is None:
        return []
    items = []
    for label, path in NAV:
        roles = WEB_MATRIX.get(("GET", path))
        if roles is not None and principal.has_role(*roles):
            items.append(NavItem(label, path, roles))
    return items


def current(request: Request) -> Principal | None:
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/<name>`` with the common context."""
    principal = current(request)
    base = {
        "principal": principal,
        "nav": nav_for(principal),
        "csrf": csrf_expected(request) or "",
        "path": request.url.path,
    }
    response: HTMLResponse = templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code
    )
    secure_headers(response)
    return response


#: Only this server's own scripts, styles and images; no frames; forms post only here.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def secure_headers(response: HTMLResponse) -> None:
    # Pages show case data and faces: never cached by the browser or a proxy.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
