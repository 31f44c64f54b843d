"""The FastAPI application: versioned routes, one error shape, auth on every route."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from retroface import __version__
from retroface.api.deps import authorise
from retroface.api.docs import add_docs_routes, offline_assets
from retroface.api.observability import Metrics, RequestContextMiddleware
from retroface.api.rbac import MATRIX
from retroface.api.routers import (
    accounts,
    casework,
    enhancements,
    faces,
    gallery,
    oversight,
    system,
)
from retroface.api.schemas import ERROR_STATUSES, ErrorResponse
from retroface.api.uploads import BodyLimitMiddleware
from retroface.context import AppContext
from retroface.core.errors import RetrofaceError
from retroface.governance.retention import RetentionScheduler
from retroface.media.images import ImageLoadError
from retroface.web.app import add_web
from retroface.web.errors import is_page, page_error

log = logging.getLogger("retroface.api")


def bound_worker_threads(tokens: int) -> None:
    """Limit the running event loop's worker threads (every sync route and dependency runs in
    one) to ``tokens``. AnyIO's limiter admits waiters first come, first served, and a newcomer
    never overtakes a waiter, so a request's wait depends on its place in the queue, not luck."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = tokens


STATUS_FOR_CODE = {
    "unauthenticated": 401,
    "too_many_attempts": 429,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "upload_too_large": 413,
    "invalid_input": 422,
    "no_face": 422,
    "invalid_video": 422,
    "too_many_requests": 429,
    "route_not_declared": 403,
    "index_unavailable": 503,
}

#: Every error code the API answers with; docs/api.md lists each one (a test holds them equal).
ERROR_CODES = (
    "invalid_request",  # 400/422: the request is malformed (JSON, form, types, ranges)
    "invalid_input",  # 422: well-formed, but a service refused the value
    "invalid_image",
    "invalid_video",
    "no_face",
    "unauthenticated",
    "forbidden",
    "route_not_declared",
    "not_found",
    "method_not_allowed",
    "conflict",
    "upload_too_large",
    "unsupported_media_type",
    "too_many_requests",
    "too_many_attempts",  # 429: failed logins throttled (account lockout or client), Retry-After
    "decryption_failed",
    "index_unavailable",  # 503: a shard of the gallery index is gone (docs/scale.md)
    "internal_error",
)

#: Errors raised by Starlette itself (routing, body parsing) mapped onto the codes above.
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def http_code(status: int) -> str:
    """The documented code for an HTTP error status, whatever raised it."""
    return HTTP_CODES.get(status, "invalid_request" if status < 500 else "internal_error")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in ERROR_STATUSES
}


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> Response:
    """The one error shape: JSON for the API, the same status and code as a page for ``/ui``."""
    if request is not None and is_page(request):
        return page_error(request, status, code, message, headers)
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(ctx: AppContext | None = None) -> FastAPI:
    ctx = ctx or AppContext()
    ctx.serving = True
    if "index" in ctx.__dict__:  # already built (a test's context): compact in the background too
        ctx.index.compact_in_background = True

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """While serving: scheduled retention, so lapsed urgent cases are purged within minutes
        even if nobody touches them (issue #11, finding 5); with local jobs, what a crashed
        predecessor left running is marked interrupted now (the runner itself starts lazily)."""
        if ctx.settings.api_threads:
            bound_worker_threads(ctx.settings.api_threads)
        if not ctx.settings.redis_url:
            ctx.job_store.fail_interrupted("local")
        scheduler = None
        if ctx.settings.retention_interval_minutes > 0:
            scheduler = RetentionScheduler(ctx.retention, ctx.settings.retention_interval_minutes)
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="retroface",
        version=__version__,
        description=(
            "Open, accountable retrospective facial recognition. Every search needs an "
            "authorised case; results are investigative leads for two-person review, never "
            "identifications. Authenticate with `Authorization: Bearer <token>`."
        ),
        # served by retroface.api.docs, through the access gate and without any CDN
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(authorise)],
        responses=ERROR_RESPONSES,
    )
    app.state.ctx = ctx
    app.state.metrics = Metrics()
    # inside the request-context middleware, so that a 413 for an oversized body has a request id
    app.add_middleware(BodyLimitMiddleware, limit=lambda: ctx.settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)

    @app.exception_handler(RetrofaceError)
    async def domain_error(request: Request, exc: RetrofaceError) -> Response:
        code = exc.code
        if code not in ERROR_CODES:  # a new error class nobody documented: say so in the log
            log.warning("undocumented error code %r answered as invalid_input", code)
            code = "invalid_input"
        retry = getattr(exc, "retry_after", None)
        headers = None if retry is None else {"Retry-After": str(retry)}
        if code == "too_many_attempts" and ctx.settings.login_throttle_pause > 0:
            await asyncio.sleep(ctx.settings.login_throttle_pause)  # a tarpit, not a thread
        return _error(STATUS_FOR_CODE.get(code, 400), code, exc.message, headers, request)

    @app.exception_handler(ImageLoadError)
    async def image_error(request: Request, exc: ImageLoadError) -> Response:
        return _error(422, "invalid_image", str(exc), request=request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return _error(422, "invalid_request", "; ".join(parts)[:2000], request=request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = http_code(exc.status_code)
        headers = getattr(exc, "headers", None)
        return _error(exc.status_code, code, str(exc.detail), headers, request)

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> Response:
        # A safety net behind the services' own checks (retroface.core.text): a value the
        # database refused (too long, out of range) is the caller's error, not the server's.
        log.warning("database refused a value: %s", type(exc.orig).__name__)
        message = "a value is too long or out of range for its field"
        return _error(422, "invalid_input", message, request=request)

    # Unexpected exceptions are answered by RequestContextMiddleware, so that the 500 carries
    # the request id like every other response (a handler registered here runs outside it).

    for module in (system, accounts, casework, enhancements, faces, gallery, oversight):
        app.include_router(module.router)
    app.include_router(system.metrics_router)
    add_web(app)
    add_docs_routes(app, offline_assets())
    app.openapi = lambda: _openapi_with_roles(app)  # type: ignore[method-assign]
    return app


def _openapi_with_roles(app: FastAPI) -> dict[str, Any]:
    """Publish the access matrix in the contract: public routes need no token; every other
    operation states the roles allowed."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            roles = MATRIX.get((method.upper(), path), frozenset())
            if roles is None:
                op.pop("security", None)
                op["description"] = (op.get("description") or "") + "\n\nPublic: no token."
            else:
                names = ", ".join(sorted(r.value for r in roles))
                op["description"] = (op.get("description") or "") + f"\n\nRoles allowed: {names}."
    app.openapi_schema = schema
    return schema
