"""Probe enhancement: a derived, audited version of a probe (the original never changes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import EnhanceRequest
from retroface.core.text import MAX_ID
from retroface.search.views import ProbeView

router = APIRouter(prefix="/api/v1", tags=["casework"])

ProbeId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@router.post(
    "/probes/{probe_id}/enhancements",
    response_model=ProbeView,
    status_code=201,
    summary="Derive an enhanced version of a probe by recorded steps; returns it with its faces",
)
def enhance_probe(probe_id: ProbeId, body: EnhanceRequest, ctx: Ctx, caller: Caller) -> ProbeView:
    return ctx.enhancements.enhance(caller, probe_id, body.steps)
