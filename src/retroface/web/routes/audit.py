"""The auditor's and DPO's pages: the audit log browser, chain verification and the reports.

The log is read through :meth:`OversightService.audit_records
<retroface.governance.oversight.OversightService.audit_records>` (auditor only, audited as
``audit.query``, blind review kept), verification through ``verify_audit``, the reports through
``transparency`` and ``dpia`` (each audited as at the API). The reports are the same
self-contained HTML documents the CLI writes; served whole, their one ``<style>`` block is allowed
by its hash in their own Content-Security-Policy, and nothing else (no script at all).
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.core.errors import InvalidInputError, RetrofaceError
from retroface.core.roles import Role
from retroface.core.text import MAX_OFFSET
from retroface.governance import reports
from retroface.governance.audit_browse import AuditQuery
from retroface.web.render import render
from retroface.web.routes.review import form_status

router = APIRouter(prefix="/ui", include_in_schema=False)

PAGE = 50
Text = Annotated[str, Query(max_length=200)]


def _day(value: str, field: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInputError(f"{field}: a date as YYYY-MM-DD") from None


def _start(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), tzinfo=UTC) if day else None


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    actor: Text = "",
    action: Text = "",
    object_type: Text = "",
    object_id: Text = "",
    case_ref: Text = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    form = {
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "case_ref": case_ref,
        "since": since,
        "until": until,
    }
    try:
        last = _day(until, "to")
        query = AuditQuery(
            actor=actor.strip() or None,
            action=action.strip() or None,
            object_type=object_type.strip() or None,
            object_id=object_id.strip() or None,
            case_ref=case_ref.strip() or None,
            since=_start(_day(since, "from")),
            # "to" is the last day shown, so the query's exclusive end is the next midnight
            until=_start(last + timedelta(days=1)) if last else None,
        )
        page = ctx.oversight.audit_records(caller, query, offset=offset, limit=PAGE, via="web")
    except RetrofaceError as exc:
        if exc.code != "invalid_input":
            raise
        return render(request, "audit_log.html", 422, form=form, page=None, error=exc.message)
    keep = "&".join(f"{k}={v}" for k, v in request.query_params.items() if k != "offset" and v)
    return render(request, "audit_log.html", form=form, page=page, keep=keep, error=None)


@router.post("/audit/verify", response_class=HTMLResponse)
def verify(request: Request, ctx: Ctx, caller: Caller) -> Response:
    result = ctx.oversight.verify_audit(caller)
    return render(request, "audit_verify.html", result=result)


# ---------------------------------------------------------------------- reports


def _period(start: str, end: str, now: datetime) -> tuple[datetime, datetime]:
    """The report period: ``start`` inclusive, ``end`` the last day shown (default: the last
    30 days up to today)."""
    last = _day(end, "to") or now.date()
    first = _day(start, "from") or last - timedelta(days=29)
    since, until = _start(first), _start(last + timedelta(days=1))
    assert since is not None and until is not None
    return since, until


def _eval_path(ctx: Ctx) -> Path:
    path: Path = ctx.settings.eval_report or ctx.settings.home / "reports" / "evaluation.html"
    return path


@router.get("/reports", response_class=HTMLResponse)
def reports_page(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    start: Annotated[str, Query(max_length=10)] = "",
    end: Annotated[str, Query(max_length=10)] = "",
) -> Response:
    try:
        since, until = _period(start, end, ctx.clock())
        report = ctx.oversight.transparency(caller, since, until, via="web")
    except RetrofaceError as exc:
        return render(
            request,
            "reports.html",
            form_status(exc),
            error=exc.message,
            form={"start": start, "end": end},
            report=None,
            charts=[],
        )
    charts = reports.transparency_charts(report)
    shown_end = (until - timedelta(days=1)).date().isoformat()
    eval_report = _eval_path(ctx)
    return render(
        request,
        "reports.html",
        report=report,
        charts=charts,
        form={"start": since.date().isoformat(), "end": shown_end},
        eval_report=eval_report,
        eval_exists=eval_report.is_file(),
        may_verify=caller.has_role(Role.AUDITOR, Role.ADMIN),
        error=None,
    )


_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def _document(html: str) -> HTMLResponse:
    """A whole report document with a CSP that allows its own style blocks (by hash), its
    embedded images and nothing else: no script, no frame, no other origin."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _STYLE.findall(html)
    )
    response = HTMLResponse(html)
    styles = hashes or "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src data:; style-src {styles}; "
        "frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@router.get("/reports/transparency", response_class=HTMLResponse)
def transparency_document(
    ctx: Ctx,
    caller: Caller,
    start: Annotated[str, Query(max_length=10)] = "",
    end: Annotated[str, Query(max_length=10)] = "",
) -> Response:
    since, until = _period(start, end, ctx.clock())
    report = ctx.oversight.transparency(caller, since, until, via="web")
    return _document(reports.render_transparency_html(report))


@router.get("/reports/dpia", response_class=HTMLResponse)
def dpia_document(ctx: Ctx, caller: Caller) -> Response:
    return _document(reports.render_dpia_html(ctx.oversight.dpia(caller, via="web")))


@router.get("/reports/evaluation", response_class=HTMLResponse)
def evaluation_document(request: Request, ctx: Ctx, caller: Caller) -> Response:
    """The latest evaluation report written by ``retroface eval identify --html`` (a file the
    operator of the system produced: served as it is, with no script allowed to run)."""
    path = _eval_path(ctx)
    if not path.is_file():
        return render(
            request,
            "error.html",
            status_code=404,
            title="Not found",
            code="not_found",
            message=(
                f"no evaluation report at {path}: run "
                f"`retroface eval identify --html {path}` (see docs/accuracy.md)"
            ),
        )
    return _document(path.read_text(encoding="utf-8"))
