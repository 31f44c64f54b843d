"""User accounts (admin)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import TokenIssue, TokenResponse, UserCreate, UserOut
from retroface.governance.users import UserInfo

router = APIRouter(prefix="/api/v1/users", tags=["users"])


def _out(u: UserInfo) -> UserOut:
    return UserOut(
        id=u.id,
        username=u.username,
        display_name=u.display_name,
        roles=sorted(r.value for r in u.roles),
        active=u.active,
        created_at=u.created_at,
    )


@router.get("", response_model=list[UserOut], summary="All accounts")
def list_users(ctx: Ctx, caller: Caller) -> list[UserOut]:
    return [_out(u) for u in ctx.users.list(caller)]


@router.post("", response_model=UserOut, status_code=201, summary="Create an account")
def add_user(body: UserCreate, ctx: Ctx, caller: Caller) -> UserOut:
    ctx.users.add(caller, body.username, body.roles, body.password, body.display_name)
    return _out(ctx.users.get(caller, body.username))


@router.post("/{username}/disable", response_model=UserOut, summary="Disable an account")
def disable_user(username: str, ctx: Ctx, caller: Caller) -> UserOut:
    ctx.users.disable(caller, username)
    return _out(ctx.users.get(caller, username))


@router.post(
    "/{username}/tokens", response_model=TokenResponse, status_code=201, summary="Issue a token"
)
def issue_user_token(username: str, body: TokenIssue, ctx: Ctx, caller: Caller) -> TokenResponse:
    token = ctx.users.issue_token(caller, username, body.name, timedelta(days=body.ttl_days))
    return TokenResponse(access_token=token, expires_in_days=body.ttl_days)
