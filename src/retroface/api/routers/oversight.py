"""Audit verification and export, retention, transparency/DPIA reports and the monthly
oversight figures (the one route an oversight account may call besides ``/me`` and ``/models``)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Response

from retroface.api.deps import Caller, Ctx
from retroface.audit.chain import VerifyResult
from retroface.governance.oversight_figures import MAX_MONTHS
from retroface.governance.reports import DpiaReport, TransparencyReport
from retroface.governance.retention import RetentionReport
from retroface.governance.views import OversightFigures

router = APIRouter(prefix="/api/v1", tags=["oversight"])


@router.get(
    "/audit/verify",
    response_model=VerifyResult,
    summary="Check the audit hash chain and signed checkpoints",
)
def audit_verify(ctx: Ctx, caller: Caller) -> VerifyResult:
    return ctx.oversight.verify_audit(caller)


@router.get(
    "/audit/export",
    summary="The audit log as a zip (JSONL, checkpoints, public keys) for offline verification",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def audit_export(ctx: Ctx, caller: Caller) -> Response:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audit-export"
        ctx.oversight.export_audit(caller, folder, via="api", destination="download")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, f"audit-export/{f.name}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        buf.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.zip"'},
    )


@router.post(
    "/retention/run",
    response_model=RetentionReport,
    summary="Purge what is due (files, rows, index entries)",
)
def retention_run(
    ctx: Ctx, caller: Caller, dry_run: Annotated[bool, Query()] = False
) -> RetentionReport:
    return ctx.retention.run(caller, dry_run=dry_run)


@router.get(
    "/reports/transparency",
    response_model=TransparencyReport,
    summary="Transparency facts for a period",
)
def transparency(
    ctx: Ctx,
    caller: Caller,
    start: Annotated[datetime, Query(alias="from")],
    end: Annotated[datetime, Query(alias="to")],
) -> TransparencyReport:
    return ctx.oversight.transparency(caller, start, end, via="api")


@router.get("/reports/dpia", response_model=DpiaReport, summary="DPIA facts from the live system")
def dpia(ctx: Ctx, caller: Caller) -> DpiaReport:
    return ctx.oversight.dpia(caller, via="api")


@router.get(
    "/reports/oversight",
    response_model=OversightFigures,
    summary="Aggregated figures per month for an oversight body: no faces, no names",
)
def oversight_figures(
    ctx: Ctx,
    caller: Caller,
    months: Annotated[int, Query(ge=1, le=MAX_MONTHS)] = 12,
) -> OversightFigures:
    return ctx.oversight.monthly(caller, months, via="api")
