"""Errors on pages: the same codes and statuses as the API, shown as a page instead of JSON.

An unauthenticated page request is sent to the sign-in page (and back afterwards); anything else
renders ``error.html`` with the API's status code, so a refused page is a real 403 that tests and
proxies can see.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.web.render import render
from retroface.web.session import SESSION_COOKIE

TITLES = {
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "File too large",
    422: "Please check what you entered",
    429: "Too many attempts",
}


def is_page(request: Request) -> bool:
    return request.url.path.startswith("/ui/") or request.url.path == "/ui"


def page_error(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    if status == 401 and request.url.path != "/ui/login":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        redirect = RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
        redirect.delete_cookie(SESSION_COOKIE, path="/ui")  # expired or revoked: start afresh
        return redirect
    title = TITLES.get(status, "Something went wrong")
    response: HTMLResponse = render(
        request, "error.html", status_code=status, title=title, code=code, message=message
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
