"""Request and response models: the API's contract, published as OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from retroface.core.roles import Role
from retroface.core.text import MAX_ID


class ErrorBody(BaseModel):
    code: str = Field(examples=["forbidden"])
    message: str = Field(examples=["olive may not call this: needs authoriser"])


class ErrorResponse(BaseModel):
    error: ErrorBody


#: The error statuses every operation documents (with :class:`ErrorResponse` as the body).
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422)


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=100, examples=["olive"])
    password: str = Field(min_length=1, max_length=1024, examples=["correct horse battery"])
    ttl_days: float = Field(default=1.0, ge=0.01, le=365)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in_days: float


USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"


class UserCreate(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN, examples=["rita"])
    # the enum itself, so a new role is accepted here the day it exists (oversight was not)
    roles: list[Role] = Field(min_length=1, examples=[["reviewer"]])
    password: str | None = Field(default=None, min_length=12, max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)
    service: bool = Field(
        default=False,
        description="An account for another system: no password; admins issue its tokens.",
    )


class TokenIssue(BaseModel):
    name: str = Field(default="api", min_length=1, max_length=100)
    ttl_days: float = Field(default=30, ge=0.01, le=365)


class CaseCreate(BaseModel):
    reference: str = Field(min_length=1, max_length=100, examples=["CR/123/26"])
    offence_category: str = Field(min_length=1, max_length=100, examples=["robbery"])
    purpose: str = Field(min_length=1, max_length=5000, examples=["identify the suspect"])
    justification: str = Field(
        min_length=1,
        max_length=5000,
        examples=["serious offence with injury; the CCTV still is the only lead"],
    )
    urgent: bool = False


class CaseDecision(BaseModel):
    approve: bool
    note: str = Field(min_length=1, max_length=5000, examples=["necessary and proportionate"])
    valid_days: float | None = Field(default=None, gt=0, le=365)
    investigation_mode: bool = Field(
        default=False,
        description="Allow investigation mode (approval only): searches list the top-k "
        "whatever their score, those below the operating threshold marked so.",
    )


class TeamAdd(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN, examples=["oscar"])
    role: Literal["member", "supervisor"] = Field(
        default="member",
        description="member: added by the case's owner; supervisor: added by an authoriser",
    )


class SearchRequest(BaseModel):
    case: str = Field(min_length=1, max_length=100, examples=["CR/123/26"])
    probe_id: int = Field(ge=1, le=MAX_ID)
    face: int | None = Field(default=None, ge=0, le=1000)
    top_k: int = Field(default=20, ge=1, le=200)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)


class ReviewDecision(BaseModel):
    decision: Literal["possible match", "no match", "inconclusive"]
    note: str = Field(min_length=1, max_length=5000)
    candidate_rank: int | None = Field(default=None, ge=1, le=200)


class EnrolmentRequest(BaseModel):
    paths: list[str] = Field(
        min_length=1,
        max_length=100_000,
        description="Files or folders relative to RETROFACE_IMPORT_DIR.",
        examples=[["custody/2026-11"]],
    )
    inclusion_reason: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=200)
    multi_face: Literal["reject", "main"] = "reject"
    strict_quality: bool = Field(
        default=False,
        description="Refuse faces below the quality minimums instead of enrolling them "
        "flagged (the default).",
    )
    allow_low_quality: bool = Field(
        default=False, description="No effect: enrolling such faces flagged is the default."
    )


class UploadedImageLabels(BaseModel):
    """What a manifest row says about one uploaded image (``POST /gallery/images``, form field
    ``items``: a JSON array, one object per file, in the files' order)."""

    path: str = Field(
        min_length=1,
        max_length=1024,
        description="The image's name as the client knows it (its path there): recorded as the "
        "image's name and provenance, and named in a rejection. Never opened by the server.",
        examples=["custody/2026-11/ab123/front.jpg"],
    )
    subject: str = Field(min_length=1, max_length=200, examples=["ab123"])
    face: int | None = Field(default=None, ge=0, le=1000)
    inclusion_reason: str | None = Field(default=None, max_length=200)
    legal_basis: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=200)
    provenance: str | None = Field(default=None, max_length=500)
    capture_date: datetime | None = None
    display_name: str | None = Field(default=None, max_length=200)
    retention_until: datetime | None = None


class EnhanceRequest(BaseModel):
    steps: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=20,
        description=(
            "Ordered steps, each {'op': name, parameter: value}: crop (box [x0,y0,x1,y1]), "
            "rotate (angle), brightness (offset), contrast (factor), gamma (gamma), equalize "
            "(clip_limit), denoise (method nlmeans|bilateral, strength), sharpen (amount, "
            "radius), upscale (factor, interpolation cubic|lanczos). See docs/enhancement.md."
        ),
        examples=[[{"op": "crop", "box": [40, 30, 210, 220]}, {"op": "upscale", "factor": 2}]],
    )
