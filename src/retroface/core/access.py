"""Who is acting, and the one check every domain service makes before it acts.

A :class:`Principal` is what authentication yields; services take it as their first argument,
check its roles with :func:`require_role` and write the audit record of the action (or of its
refusal) themselves, so no front end can forget either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from retroface.core.errors import PermissionDeniedError
from retroface.core.roles import Role

#: The actor named in audit records of what the system does by itself (retention, first run).
SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class Principal:
    """An authenticated user, as the rest of the system sees them.

    ``credential`` names how they authenticated ("token:17", "password", ...); every audit
    record written for them carries it, so an action can be traced to the token that did it.
    It takes no part in equality: the same person is the same principal whatever they used.
    """

    id: int
    username: str
    roles: frozenset[Role]
    credential: str | None = field(default=None, compare=False)

    def has_role(self, *roles: Role) -> bool:
        return not self.roles.isdisjoint(roles)


#: The system itself, for scheduled work (retention) and first-run setup; it holds no role, so a
#: service that needs one must be told explicitly that the system may act (``system_ok``).
SYSTEM = Principal(id=0, username=SYSTEM_ACTOR, roles=frozenset())


def require_role(user: Principal, *roles: Role) -> None:
    """Raise unless ``user`` holds at least one of ``roles`` (no role implies another)."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    if not user.has_role(*roles):
        needed = " or ".join(r.value for r in roles)
        held = ", ".join(sorted(r.value for r in user.roles)) or "none"
        raise PermissionDeniedError(
            f"user {user.username!r} needs the role {needed} for this (has: {held})"
        )


class AuditFn(Protocol):
    """``AuditLog.record``: append one record in the caller's session (its transaction)."""

    def __call__(
        self,
        session: Any,
        *,
        actor: str | Principal,
        action: str,
        case_ref: str | None = None,
        object_type: str | None = None,
        object_id: str | int | None = None,
        justification: str | None = None,
        details: Any = None,
        ts: datetime | None = None,
    ) -> Any: ...
