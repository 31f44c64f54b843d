"""The authoriser's pages: the queue of requests awaiting a decision, and the decision itself.

The queue is :meth:`CaseService.list_cases` for status ``pending`` (an authoriser sees every
pending case, and those they decided); urgent requests come first, with the time left of the
policy's urgent window measured by the injected clock (``ctx.clock``), so the page and the
service agree on when a window ends. The decision is :meth:`CaseService.authorise`, which keeps
separation of duties (no one authorises their own case), requires a note and audits it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import RetrofaceError
from retroface.core.status import CaseStatus
from retroface.governance.views import CaseView
from retroface.web.render import render
from retroface.web.routes.casework import case_url, time_left

router = APIRouter(prefix="/ui", include_in_schema=False)


def _queue(
    request: Request,
    ctx: AppContext,
    caller: Principal,
    status_code: int = 200,
    **extra: object,
) -> Response:
    pending = ctx.cases.list_cases(caller, CaseStatus.PENDING)
    now = ctx.clock()
    # Urgent first, soonest deadline first; then the oldest request.
    far = datetime.max.replace(tzinfo=now.tzinfo)

    def order(c: CaseView) -> tuple[bool, datetime, datetime]:
        deadline = c.urgent_deadline if c.urgent and c.urgent_deadline else far
        return (not c.urgent, deadline, c.opened_at)

    pending.sort(key=order)
    return render(
        request,
        "authorisations.html",
        status_code=status_code,
        pending=pending,
        left={c.reference: time_left(c.urgent_deadline, now) for c in pending if c.urgent},
        window_hours=ctx.policy.urgent_window_hours,
        default_days=ctx.policy.authorisation_days,
        case_url=case_url,
        **extra,
    )


@router.get("/authorisations", response_class=HTMLResponse)
def queue(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    decided: Annotated[str | None, Query(max_length=200)] = None,
    approved: Annotated[bool, Query()] = False,
) -> Response:
    flash = None
    if decided:
        flash = f"Case {decided} {'approved' if approved else 'refused'}; the decision is audited."
    return _queue(request, ctx, caller, flash=flash)


@router.post("/cases/{ref:path}/decision", response_class=HTMLResponse)
def decide(
    request: Request,
    ref: str,
    ctx: Ctx,
    caller: Caller,
    approve: Annotated[bool, Form()],
    note: Annotated[str, Form(max_length=5000)] = "",
    valid_days: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    try:
        days = float(valid_days) if valid_days.strip() else None
    except ValueError:
        return _queue(
            request,
            ctx,
            caller,
            status_code=422,
            flash="validity must be a number of days",
            flash_kind="error",
            failed=ref,
        )
    try:
        case = ctx.cases.authorise(caller, ref, approve, note, days)
    except RetrofaceError as exc:
        if exc.code == "forbidden" or exc.code == "not_found":
            raise
        return _queue(
            request,
            ctx,
            caller,
            status_code=409 if exc.code == "conflict" else 422,
            flash=f"{ref}: {exc.message}",
            flash_kind="error",
            failed=ref,
            note=note,
        )
    query = urlencode({"decided": case.reference, "approved": str(approve).lower()})
    return RedirectResponse(f"/ui/authorisations?{query}", status_code=303)
