"""User accounts (admin)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from retroface.api.deps import Caller, Ctx
from retroface.api.schemas import TokenIssue, TokenResponse, UserCreate
from retroface.governance.users import Account

router = APIRouter(prefix="/api/v1/users", tags=["users"])

# The service returns UserInfo (an Account that also says whether a password is set); declaring
# Account here keeps that out of the API's answer, as it always was.


@router.get("", response_model=list[Account], summary="All accounts")
def list_users(ctx: Ctx, caller: Caller) -> list[Account]:
    return list(ctx.users.list(caller))


@router.post("", response_model=Account, status_code=201, summary="Create an account")
def add_user(body: UserCreate, ctx: Ctx, caller: Caller) -> Account:
    ctx.users.add(
        caller, body.username, body.roles, body.password, body.display_name, service=body.service
    )
    return ctx.users.get(caller, body.username)


@router.post("/{username}/disable", response_model=Account, summary="Disable an account")
def disable_user(username: str, ctx: Ctx, caller: Caller) -> Account:
    ctx.users.disable(caller, username)
    return ctx.users.get(caller, username)


@router.post(
    "/{username}/tokens",
    response_model=TokenResponse,
    status_code=201,
    summary="Issue a token to yourself or to a service account (403 for anyone else)",
)
def issue_user_token(username: str, body: TokenIssue, ctx: Ctx, caller: Caller) -> TokenResponse:
    token = ctx.users.issue_token(caller, username, body.name, timedelta(days=body.ttl_days))
    return TokenResponse(access_token=token, expires_in_days=body.ttl_days)
