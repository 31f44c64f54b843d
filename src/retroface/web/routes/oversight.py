"""The oversight view: aggregated figures per month for an ethics panel or a regulator.

It renders :meth:`OversightService.monthly
<retroface.governance.oversight.OversightService.monthly>` and nothing else: counts under a fixed
vocabulary, no faces, no names, no case references (the service guarantees it; the page adds
nothing that could name anyone, not even the signed-in user's own activity).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.governance.oversight_figures import MAX_MONTHS
from retroface.web.render import render

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/oversight", response_class=HTMLResponse)
def oversight(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    months: Annotated[int, Query(ge=1, le=MAX_MONTHS)] = 12,
) -> Response:
    figures = ctx.oversight.monthly(caller, months, via="web")
    peak = max([m.searches.run for m in figures.months] + [1])
    return render(request, "oversight.html", figures=figures, months=months, peak=peak)
