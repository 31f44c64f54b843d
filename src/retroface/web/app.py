"""Mount the pages and their static files on the API's FastAPI app."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from retroface.web.render import HERE
from retroface.web.routes import admin, audit, authorise, casework, footage, home, oversight, review
from retroface.web.session import csrf_guard

root = APIRouter(include_in_schema=False)


@root.get("/")
def start() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


#: Page routers; each module declares its pages in retroface.web.access.WEB_MATRIX (a test holds
#: the two equal).
ROUTERS: tuple[APIRouter, ...] = (
    root,
    home.router,
    # operator and authoriser pages
    authorise.router,  # before casework: its POST /cases/{ref}/decision has a suffix
    casework.router,
    footage.router,
    # end of operator and authoriser pages
    # reviewer, auditor, oversight and admin pages
    review.router,
    audit.router,
    oversight.router,
    admin.router,
)


def add_web(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router, dependencies=[Depends(csrf_guard)])
    # Local assets only (htmx vendored, see static/VENDORED.md): nothing from another server.
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")
