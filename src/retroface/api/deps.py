"""Request dependencies: the application context and the authenticated, authorised caller."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from retroface.api.rbac import allowed_roles
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import PermissionDeniedError, RetrofaceError
from retroface.governance.users import AuthenticationError
from retroface.web.session import session_token

#: Pages live under this prefix; the API under /api/v1.
WEB_PREFIX = "/ui/"

bearer = HTTPBearer(auto_error=False, description="An API token from POST /api/v1/auth/token")


class RouteNotDeclaredError(RetrofaceError):
    code = "route_not_declared"


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def authorise(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """Authenticate the bearer token and check the caller's roles against the matrix."""
    route = request.scope.get("route")
    # "{ref:path}" in the route is "{ref}" in the matrix and the OpenAPI document
    path = re.sub(r"\{(\w+):\w+\}", r"{\1}", getattr(route, "path", request.url.path))
    ctx = get_ctx(request)
    try:
        roles = allowed_roles(request.method, path, public_docs=ctx.settings.public_docs)
    except KeyError:
        raise RouteNotDeclaredError(f"{request.method} {path} has no access rule") from None
    if roles is None:
        return None
    if path.startswith(WEB_PREFIX):
        # A page: the session cookie, never a bearer header (a page is what a browser opens).
        token = session_token(request)
        if token is None:
            raise AuthenticationError("sign in to continue")
    elif credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("authentication required: send 'Authorization: Bearer <token>'")
    else:
        token = credentials.credentials
    principal = ctx.users.authenticate_token(token)
    if not principal.has_role(*roles):
        needed = ", ".join(sorted(r.value for r in roles))
        error = PermissionDeniedError(f"{principal.username} may not call this: needs {needed}")
        # Refused at the gate, before any service runs: audited here like a service's refusal.
        ctx.guard.refused(
            principal,
            "api.call",
            error,
            object_type="route",
            object_id=f"{request.method} {path}",
            details={"needed": sorted(r.value for r in roles)},
        )
        raise error
    request.state.principal = principal
    return principal


def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise AuthenticationError("authentication required")
    return principal


Ctx = Annotated[AppContext, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(current_principal)]
