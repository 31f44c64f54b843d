"""Health, readiness, identity, models, configuration and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from retroface import __version__
from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import ErrorResponse, TokenRequest, TokenResponse
from retroface.governance.users import Identity

router = APIRouter(prefix="/api/v1", tags=["system"])
metrics_router = APIRouter(tags=["system"])


# The API's own answers (no service returns these), declared so the OpenAPI document names them.
class Health(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class ModelInfo(BaseModel):
    model: dict[str, Any]


class ConfigInfo(BaseModel):
    backend: str
    det_size: int
    index_kind: str
    database: str
    policy: dict[str, Any]
    max_upload_bytes: int


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: see checks"}},
    summary="Readiness: database reachable and models loaded",
)
def ready(ctx: Ctx, response: Response) -> Readiness:
    checks: dict[str, str] = {}
    try:
        with ctx.db.session() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, never raise: readiness is a status
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        checks["model"] = ctx.engine.identity.key
    except Exception as exc:
        checks["model"] = f"error: {exc}"
    ok = checks["database"] == "ok" and not checks["model"].startswith("error")
    if not ok:
        response.status_code = 503
    return Readiness(ready=ok, checks=checks)


@router.post(
    "/auth/token",
    response_model=TokenResponse,
    summary="Exchange a password for a token",
    responses={429: {"model": ErrorResponse, "description": "Too many failed logins: see when"}},
)
def issue_token(body: TokenRequest, ctx: Ctx, request: Request) -> TokenResponse:
    from datetime import timedelta

    # The peer address throttles a client's attempts. Behind a reverse proxy, run uvicorn with
    # --proxy-headers / --forwarded-allow-ips so that this is the real client, not the proxy.
    client = request.client.host if request.client else "unknown"
    principal = ctx.users.authenticate_password(body.username, body.password, client=client)
    token = ctx.users.issue_token(
        principal, principal.username, "api-login", timedelta(days=body.ttl_days)
    )
    return TokenResponse(access_token=token, expires_in_days=body.ttl_days)


@router.get("/me", response_model=Identity, summary="Who the token belongs to")
def me(caller: Caller) -> Identity:
    return Identity.of(caller)


@router.get(
    "/models",
    response_model=ModelInfo,
    summary="The face model in use, its weights, hashes and licence",
)
def models(ctx: Ctx) -> ModelInfo:
    return ModelInfo(model=ctx.engine.identity.to_dict())


@router.get("/config", response_model=ConfigInfo, summary="Settings and governance policy in force")
def config(ctx: Ctx) -> ConfigInfo:
    s = ctx.settings
    return ConfigInfo(
        backend=s.backend,
        det_size=s.det_size,
        index_kind=s.index_kind,
        database=ctx.db.engine.dialect.name,
        policy=ctx.policy.to_dict(),
        max_upload_bytes=s.max_upload_bytes,
    )


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    request.app.state.metrics.refresh(request.app.state.ctx)
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
