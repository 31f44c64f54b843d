"""Cases, authorisation, probes, searches, reviews and disclosure exports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import (
    CaseCreate,
    CaseDecision,
    ReviewDecision,
    SearchRequest,
    TeamAdd,
)
from retroface.api.uploads import read_upload
from retroface.core.errors import InvalidInputError
from retroface.core.text import MAX_ID, MAX_OFFSET, safe_filename
from retroface.governance.views import (
    CaseView,
    QueueItem,
    ReviewOutcome,
    ReviewSheet,
    TeamMemberView,
)
from retroface.search.batch import ProbeFile
from retroface.search.batch import search_batch as search_probes
from retroface.search.service import ProbeProvenance
from retroface.search.views import (
    BatchSearchFailure,
    BatchSearchResult,
    ProbeView,
    SearchExport,
    SearchResult,
)

router = APIRouter(prefix="/api/v1", tags=["casework"])

#: Ids within what both stores hold (PostgreSQL integer): larger ones are a 422, not a 500.
SearchId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@router.get("/cases", response_model=list[CaseView], summary="Cases, newest first")
def list_cases(
    ctx: Ctx,
    caller: Caller,
    status: Annotated[str | None, Query(max_length=20)] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CaseView]:
    return ctx.cases.list_cases(caller, status)[offset : offset + limit]


@router.post("/cases", response_model=CaseView, status_code=201, summary="Open a case")
def open_case(body: CaseCreate, ctx: Ctx, caller: Caller) -> CaseView:
    return ctx.cases.open(
        caller,
        body.reference,
        body.offence_category,
        body.purpose,
        body.justification,
        urgent=body.urgent,
    )


# The team routes come before GET /cases/{ref}: a reference may contain "/", so that route
# would otherwise take ".../team" as part of the reference.
@router.get(
    "/cases/{ref:path}/team",
    response_model=list[TeamMemberView],
    summary="Who has need-to-know on a case: owner, members, supervisors",
)
def team_list(ref: str, ctx: Ctx, caller: Caller) -> list[TeamMemberView]:
    return ctx.cases.team.members(caller, ref)


@router.post(
    "/cases/{ref:path}/team",
    response_model=TeamMemberView,
    status_code=201,
    summary="Add an operator to a case's team (owner) or as its supervisor (authoriser)",
)
def team_add(ref: str, body: TeamAdd, ctx: Ctx, caller: Caller) -> TeamMemberView:
    return ctx.cases.team.add(caller, ref, body.username, body.role)


@router.delete(
    "/cases/{ref:path}/team/{username}",
    response_model=TeamMemberView,
    summary="Remove someone from a case's team (members: owner; supervisors: authoriser)",
)
def team_remove(ref: str, username: str, ctx: Ctx, caller: Caller) -> TeamMemberView:
    return ctx.cases.team.remove(caller, ref, username)


@router.get("/cases/{ref:path}", response_model=CaseView, summary="One case")
def get_case(ref: str, ctx: Ctx, caller: Caller) -> CaseView:
    return ctx.cases.show(caller, ref)


@router.post(
    "/cases/{ref:path}/decision",
    response_model=CaseView,
    summary="Approve or refuse a case (refusal deletes everything it produced)",
)
def decide_case(ref: str, body: CaseDecision, ctx: Ctx, caller: Caller) -> CaseView:
    return ctx.cases.authorise(
        caller,
        ref,
        body.approve,
        body.note,
        body.valid_days,
        investigation_mode=body.investigation_mode,
    )


@router.post(
    "/cases/{ref:path}/probes",
    response_model=ProbeView,
    status_code=201,
    summary="Submit a probe image with its provenance; returns the faces found",
)
def add_probe(
    ref: str,
    ctx: Ctx,
    caller: Caller,
    file: Annotated[UploadFile, File(description="The probe image")],
    source: Annotated[str, Form(min_length=1, max_length=200, examples=["CCTV"])],
    how_obtained: Annotated[
        str, Form(min_length=1, max_length=500, examples=["exported from DVR, exhibit AB/1"])
    ],
) -> ProbeView:
    data = read_upload(file, ctx.settings.max_upload_bytes)
    return ctx.searches.add_probe(
        caller, ref, data, safe_filename(file.filename), ProbeProvenance(source, how_obtained)
    )


#: Most images one batch request may carry: the request holds a worker thread for its whole length
#: (about 30 ms an LFW-sized image on 2 cores; a 2 MP photo several times that).
MAX_BATCH_FILES = 100


@router.post(
    "/cases/{ref:path}/searches",
    response_model=list[BatchSearchResult | BatchSearchFailure],
    summary="Submit several probe images and search each: one audited search per image, in order",
)
def search_batch(
    ref: str,
    ctx: Ctx,
    caller: Caller,
    files: Annotated[list[UploadFile], File(description="The probe images, one search each")],
    source: Annotated[str, Form(min_length=1, max_length=200, examples=["CCTV"])],
    how_obtained: Annotated[
        str, Form(min_length=1, max_length=500, examples=["exported from DVR, exhibit AB/1"])
    ],
    face: Annotated[int | None, Form(ge=0, le=1000, description="Face, for every image")] = None,
    top_k: Annotated[int, Form(ge=1, le=200)] = 20,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
) -> list[BatchSearchResult | BatchSearchFailure]:
    """Each image is its own probe and search (same records, retention and review as one);
    an image that fails gets an entry with its ``error`` and the others go on. A refusal of the
    request itself (role, need-to-know, the case) is an error status as for one search."""
    if len(files) > MAX_BATCH_FILES:
        raise InvalidInputError(f"at most {MAX_BATCH_FILES} images in one request")
    limit = ctx.settings.max_upload_bytes
    probes = [
        ProbeFile(safe_filename(f.filename), lambda f=f: read_upload(f, limit))  # type: ignore[misc]
        for f in files
    ]
    return search_probes(
        ctx.searches,
        caller,
        ref,
        probes,
        ProbeProvenance(source, how_obtained),
        face=face,
        top_k=top_k,
        threshold=threshold,
    )


@router.post("/searches", response_model=SearchResult, status_code=201, summary="Search one face")
def search(body: SearchRequest, ctx: Ctx, caller: Caller) -> SearchResult:
    return ctx.searches.search(
        caller, body.case, body.probe_id, body.face, body.top_k, body.threshold
    )


@router.get("/searches/{search_id}", response_model=SearchResult, summary="A stored candidate list")
def get_search(search_id: SearchId, ctx: Ctx, caller: Caller) -> SearchResult:
    return ctx.searches.get_search(caller, search_id)


@router.get(
    "/searches/{search_id}/export",
    response_model=SearchExport,
    summary="Disclosure package: the search, its candidates and the settled review",
)
def export_search(search_id: SearchId, ctx: Ctx, caller: Caller) -> SearchExport:
    return ctx.searches.export(caller, search_id)


@router.get("/reviews/queue", response_model=list[QueueItem], summary="Searches awaiting you")
def review_queue(ctx: Ctx, caller: Caller) -> list[QueueItem]:
    return ctx.reviews.queue(caller)


@router.get(
    "/reviews/{search_id}",
    response_model=ReviewSheet,
    summary="A candidate list to adjudicate (others' decisions hidden until settled)",
)
def review_show(search_id: SearchId, ctx: Ctx, caller: Caller) -> ReviewSheet:
    return ctx.reviews.show(caller, search_id)


@router.post(
    "/reviews/{search_id}",
    response_model=ReviewOutcome,
    status_code=201,
    summary="Record your independent decision",
)
def review_decide(
    search_id: SearchId, body: ReviewDecision, ctx: Ctx, caller: Caller
) -> ReviewOutcome:
    return ctx.reviews.decide(caller, search_id, body.decision, body.note, body.candidate_rank)
