"""Structured logs with request ids, and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

request_id: ContextVar[str] = ContextVar("request_id", default="-")
log = logging.getLogger("retroface.api")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying the request id, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("retroface")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Metrics:
    """A registry per app (so several apps in one process never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retroface_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retroface_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.searches = Counter(
            "retroface_searches_total", "1:N searches run", registry=self.registry
        )
        self.queue_depth = Gauge(
            "retroface_job_queue_depth", "Jobs queued or running", registry=self.registry
        )

    def refresh(self, ctx: Any) -> None:
        counts = ctx.job_store.counts()
        self.queue_depth.set(sum(counts.get(k, 0) for k in ("queued", "running", "cancelling")))


_RID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(given: str | None) -> str:
    """The caller's request id if it is a plain token (up to 64 characters), else a new one:
    an id goes into every log line and a response header, so it must not carry markup or
    control characters."""
    if given and len(given) <= 64 and set(given) <= _RID_CHARS:
        return given
    return uuid.uuid4().hex


class RequestContextMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = _request_id(request.headers.get("x-request-id"))
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        try:
            try:
                response = await call_next(request)
            except Exception:
                # Answered here rather than by an app-level handler (which Starlette runs
                # outside this middleware), so even a 500 carries the request id.
                log.exception("unhandled error")
                response = JSONResponse(
                    {
                        "error": {
                            "code": "internal_error",
                            "message": f"internal error; see the server log (request id {rid})",
                        }
                    },
                    status_code=500,
                )
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(request.scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(request.method, route, str(status)).inc()
            self.metrics.latency.labels(request.method, route).observe(elapsed)
            if route.endswith("/searches") and request.method == "POST" and status == 201:
                self.metrics.searches.inc()
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                    }
                },
            )
            request_id.reset(token)
