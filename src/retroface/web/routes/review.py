"""The reviewer's pages: the blind queue, the review sheet, the comparison view and its faces.

Every rule is :class:`retroface.governance.review.ReviewService`'s (whose search, blindness,
separation of duties) and :class:`retroface.search.faces.FaceImages`'s (need-to-know and the
audit of every face shown): the pages call them with the signed-in reviewer and render what they
return, so a decision hidden by the service is never on a page. Similarity scores are shown
according to ``RETROFACE_REVIEW_REVEAL_SCORES``: ``after-look`` (the default) keeps them off the
sheet and the comparison until the reviewer asks (or the comparison has been open for
``RETROFACE_REVIEW_LOOK_SECONDS``), so the number does not anchor the judgement of the faces.
The reviewer is entitled to the scores (the API returns them); the delay is against anchoring,
not a barrier.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from retroface.api.deps import Caller, Ctx
from retroface.core.errors import RetrofaceError
from retroface.core.roles import Role
from retroface.core.text import MAX_ID
from retroface.governance.review import DECISIONS
from retroface.search.views import FaceImage
from retroface.web.render import render

router = APIRouter(prefix="/ui", include_in_schema=False)

SearchId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Rank = Annotated[int, PathParam(ge=1, le=200)]
#: Side of the aligned crops: the sheet's pairs, and the comparison view's large faces.
SHEET_SIZE, COMPARE_SIZE = 256, 512
Size = Annotated[int, Query(ge=64, le=1024)]

#: The API's statuses for the errors a form can meet (the page re-renders with the message).
FORM_STATUS = {"conflict": 409, "forbidden": 403, "need_to_know": 403, "not_found": 404}


def form_status(exc: RetrofaceError) -> int:
    return FORM_STATUS.get(exc.code, 422)


def _reveal(ctx: Ctx) -> str:
    reveal: str = ctx.settings.review_reveal_scores
    return reveal


def _common(request: Request, ctx: Ctx) -> dict[str, Any]:
    return {
        "blur_all": ctx.settings.blur_all_faces,
        "reveal": _reveal(ctx),
        "decisions": DECISIONS,
    }


@router.get("/reviews", response_class=HTMLResponse)
def queue(request: Request, ctx: Ctx, caller: Caller) -> Response:
    return render(request, "review_queue.html", items=ctx.reviews.queue(caller))


def _sheet_page(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    search_id: int,
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    sheet = ctx.reviews.show(caller, search_id)
    quality = sheet.probe_quality or {}
    return render(
        request,
        "review_sheet.html",
        status_code=status_code,
        sheet=sheet,
        quality=quality,
        # a reviewer decides; an auditor reads (the service refuses a decision anyway)
        may_decide=caller.has_role(Role.REVIEWER) and not sheet.status.settled,
        mine=[r for r in sheet.reviews if r.reviewer_id == caller.id],
        size=SHEET_SIZE,
        error=error,
        form=form or {},
        **_common(request, ctx),
    )


@router.get("/reviews/{search_id}", response_class=HTMLResponse)
def sheet(search_id: SearchId, request: Request, ctx: Ctx, caller: Caller) -> Response:
    return _sheet_page(request, ctx, caller, search_id)


@router.post("/reviews/{search_id}", response_class=HTMLResponse)
def decide(
    search_id: SearchId,
    request: Request,
    ctx: Ctx,
    caller: Caller,
    decision: Annotated[str, Form(max_length=40)] = "",
    candidate_rank: Annotated[str, Form(max_length=10)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
) -> Response:
    form = {"decision": decision, "candidate_rank": candidate_rank, "note": note}
    try:
        rank = int(candidate_rank) if candidate_rank.strip() else None
    except ValueError:
        return _sheet_page(
            request, ctx, caller, search_id, 422, "The candidate rank must be a number.", form
        )
    try:
        outcome = ctx.reviews.decide(caller, search_id, decision, note, rank)
    except RetrofaceError as exc:
        if exc.code not in ("invalid_input", "conflict"):
            raise  # refused or gone: the error page says why (the sheet may not be shown)
        return _sheet_page(request, ctx, caller, search_id, form_status(exc), exc.message, form)
    return RedirectResponse(f"/ui/reviews/{search_id}?decided={outcome.stage}", status_code=303)


@router.get("/reviews/{search_id}/compare/{rank}", response_class=HTMLResponse)
def compare(
    search_id: SearchId, rank: Rank, request: Request, ctx: Ctx, caller: Caller
) -> Response:
    sheet = ctx.reviews.show(caller, search_id)
    ranks = [c.rank for c in sheet.candidates]
    if rank not in ranks:
        return render(
            request,
            "error.html",
            status_code=404,
            title="Not found",
            code="not_found",
            message=f"search {search_id} has no candidate at rank {rank}",
        )
    i = ranks.index(rank)
    return render(
        request,
        "review_compare.html",
        sheet=sheet,
        rank=rank,
        previous=ranks[i - 1] if i > 0 else None,
        following=ranks[i + 1] if i + 1 < len(ranks) else None,
        quality=sheet.probe_quality or {},
        size=COMPARE_SIZE,
        look_seconds=ctx.settings.review_look_seconds,
        may_decide=caller.has_role(Role.REVIEWER) and not sheet.status.settled,
        **_common(request, ctx),
    )


@router.get("/reviews/{search_id}/similarity", response_class=HTMLResponse)
def similarity(
    search_id: SearchId,
    request: Request,
    ctx: Ctx,
    caller: Caller,
    rank: Annotated[int | None, Query(ge=1, le=200)] = None,
) -> Response:
    """The scores as a fragment, loaded only when the reviewer asks (``after-look``)."""
    sheet = ctx.reviews.show(caller, search_id)
    shown = [c for c in sheet.candidates if rank is None or c.rank == rank]
    return render(
        request,
        "review_similarity.html",
        candidates=shown,
        never=_reveal(ctx) == "never",
    )


# ---------------------------------------------------------------------- face images


def _jpeg(image: FaceImage) -> Response:
    return Response(
        content=image.jpeg,
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/faces/reviews/{search_id}/probe.jpg")
def probe_face(search_id: SearchId, ctx: Ctx, caller: Caller, size: Size = SHEET_SIZE) -> Response:
    return _jpeg(ctx.faces.probe_aligned(caller, search_id, size=size))


@router.get("/faces/reviews/{search_id}/candidates/{rank}.jpg")
def candidate_face(
    search_id: SearchId, rank: Rank, ctx: Ctx, caller: Caller, size: Size = SHEET_SIZE
) -> Response:
    return _jpeg(ctx.faces.candidate_aligned(caller, search_id, rank, size=size))


@router.get("/faces/reviews/{search_id}/candidates/{rank}/landmarks.json")
def landmarks(
    search_id: SearchId, rank: Rank, ctx: Ctx, caller: Caller, size: Size = COMPARE_SIZE
) -> Response:
    marks = ctx.faces.comparison_landmarks(caller, search_id, rank, size=size)
    return JSONResponse(marks.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
