"""Face images: probe faces, privacy-mode probe images, candidates and aligned comparison crops.

Each route calls one method of :class:`retroface.search.faces.FaceImages`, which checks the
caller's role and need-to-know, audits the view and returns JPEG bytes decoded in memory from
the encrypted store. The answers are marked ``Cache-Control: no-store``: a face must not outlive
the view in a browser's or a proxy's cache, where no access check or audit reaches it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import ERROR_STATUSES
from retroface.core.text import MAX_ID
from retroface.search.views import ComparisonLandmarks, FaceImage

router = APIRouter(prefix="/api/v1", tags=["faces"])

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
FaceIndex = Annotated[int, PathParam(ge=0, le=10_000, description="the face's index in the probe")]
Rank = Annotated[int, PathParam(ge=1, le=200, description="the candidate's rank in the list")]
Size = Annotated[int, Query(ge=64, le=1024, description="side of the aligned crop, pixels")]
BlurAll = Annotated[
    bool,
    Query(description="blur every face in the image (RETROFACE_BLUR_ALL_FACES does it always)"),
]

#: Headers of every face image: never cached, never sniffed as anything but a JPEG.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class JPEGResponse(Response):
    media_type = "image/jpeg"


#: The success is a JPEG, the errors the usual JSON shape. Declared here in full: FastAPI puts
#: the app-wide error models under the route's own media type, which would promise JPEG errors.
JPEG: dict[str, Any] = {
    "response_class": JPEGResponse,
    "responses": {
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "a JPEG image",
        },
        **{
            code: {
                "description": "an error",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                },
            }
            for code in ERROR_STATUSES
        },
    },
}


def _jpeg(image: FaceImage) -> JPEGResponse:
    return JPEGResponse(content=image.jpeg, headers=NO_STORE)


@router.get(
    "/probes/{probe_id}/faces/{face}.jpg",
    summary="One face of a probe, cropped (others in its margin blurred)",
    **JPEG,
)
def probe_face(
    probe_id: Id, face: FaceIndex, ctx: Ctx, caller: Caller, blur_all: BlurAll = False
) -> JPEGResponse:
    return _jpeg(ctx.faces.probe_face(caller, probe_id, face, blur_all=blur_all))


@router.get(
    "/probes/{probe_id}/image.jpg",
    summary="A probe image in privacy mode: every face blurred but the one kept",
    **JPEG,
)
def probe_image(
    probe_id: Id,
    ctx: Ctx,
    caller: Caller,
    keep: Annotated[
        int | None, Query(ge=0, le=10_000, description="the face left unblurred; none: all")
    ] = None,
    max_side: Annotated[int, Query(ge=64, le=4096)] = 1600,
    blur_all: BlurAll = False,
) -> JPEGResponse:
    image = ctx.faces.probe_image(caller, probe_id, keep, blur_all=blur_all, max_side=max_side)
    # the probe's face boxes (POST /cases/{ref}/probes) times this are where the faces are shown
    return JPEGResponse(content=image.jpeg, headers={**NO_STORE, "X-Image-Scale": str(image.scale)})


@router.get(
    "/searches/{search_id}/probe/face.jpg",
    summary="The probe face a search was run with, cropped",
    **JPEG,
)
def search_probe_face(
    search_id: Id, ctx: Ctx, caller: Caller, blur_all: BlurAll = False
) -> JPEGResponse:
    return _jpeg(ctx.faces.search_probe_face(caller, search_id, blur_all=blur_all))


@router.get(
    "/searches/{search_id}/probe/aligned.jpg",
    summary="The search's probe face aligned on its 5 landmarks (same frame as a candidate's)",
    **JPEG,
)
def probe_aligned(
    search_id: Id, ctx: Ctx, caller: Caller, size: Size = 256, blur_all: BlurAll = False
) -> JPEGResponse:
    return _jpeg(ctx.faces.probe_aligned(caller, search_id, size=size, blur_all=blur_all))


@router.get(
    "/searches/{search_id}/candidates/{rank}/face.jpg",
    summary="A candidate's reference face, cropped",
    **JPEG,
)
def candidate_face(
    search_id: Id, rank: Rank, ctx: Ctx, caller: Caller, blur_all: BlurAll = False
) -> JPEGResponse:
    return _jpeg(ctx.faces.candidate_face(caller, search_id, rank, blur_all=blur_all))


@router.get(
    "/searches/{search_id}/candidates/{rank}/aligned.jpg",
    summary="A candidate's reference face aligned like the probe's, for side-by-side comparison",
    **JPEG,
)
def candidate_aligned(
    search_id: Id,
    rank: Rank,
    ctx: Ctx,
    caller: Caller,
    size: Size = 256,
    blur_all: BlurAll = False,
) -> JPEGResponse:
    return _jpeg(ctx.faces.candidate_aligned(caller, search_id, rank, size=size, blur_all=blur_all))


@router.get(
    "/searches/{search_id}/candidates/{rank}/landmarks",
    response_model=ComparisonLandmarks,
    summary="The 5 landmarks of the probe and of a candidate in their aligned crops",
)
def comparison_landmarks(
    search_id: Id, rank: Rank, ctx: Ctx, caller: Caller, response: Response, size: Size = 256
) -> ComparisonLandmarks:
    response.headers.update(NO_STORE)
    return ctx.faces.comparison_landmarks(caller, search_id, rank, size=size)


@router.get(
    "/gallery/images/{image_id}/face.jpg",
    summary="A gallery reference image's face, cropped (admins checking before erasure)",
    **JPEG,
)
def reference_face(
    image_id: Id, ctx: Ctx, caller: Caller, blur_all: BlurAll = False
) -> JPEGResponse:
    return _jpeg(ctx.faces.reference_face(caller, image_id, blur_all=blur_all))
