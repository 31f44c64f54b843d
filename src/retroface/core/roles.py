"""Roles, and the comma-separated form they take in ``User.roles``.

Roles are deliberately separate duties: no role implies another (an admin manages accounts but
cannot authorise or review a search unless also given those roles), so separation of duties is
visible in the user list rather than hidden in code.

``oversight`` is the one role held by people outside the force's casework: an ethics panel or a
regulator. It reads the monthly oversight figures (aggregated counts, no faces, no names) and
nothing else, so the routes any member of staff may call are given to :data:`INTERNAL_ROLES`, not
to every role.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from retroface.core.errors import InvalidInputError


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    REVIEWER = "reviewer"
    AUTHORISER = "authoriser"
    AUDITOR = "auditor"
    OVERSIGHT = "oversight"


ROLE_DESCRIPTIONS: dict[Role, str] = {
    Role.ADMIN: "manages user accounts and configuration",
    Role.OPERATOR: "opens cases, uploads probes and runs searches",
    Role.REVIEWER: "reviews candidate lists (human-in-the-loop adjudication)",
    Role.AUTHORISER: "authorises or refuses cases before any search",
    Role.AUDITOR: "reads and verifies the audit log",
    Role.OVERSIGHT: "reads the monthly oversight figures only (no faces, no names)",
}

#: The force's own staff: every role but oversight. Routes and actions open to "anyone signed in"
#: that can show a case (its list, its details, its team) are open to these, never to oversight.
INTERNAL_ROLES: frozenset[Role] = frozenset(r for r in Role if r is not Role.OVERSIGHT)


def parse_roles(value: str | Iterable[str]) -> frozenset[Role]:
    """Roles from ``"a,b"`` or an iterable of names; unknown names are an error, not ignored."""
    names = value.split(",") if isinstance(value, str) else list(value)
    roles: set[Role] = set()
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidInputError(f"unknown role {name!r}; roles are: {known}") from None
    return frozenset(roles)


def format_roles(roles: Iterable[Role | str]) -> str:
    """The canonical column form: validated, de-duplicated, in declaration order."""
    chosen = parse_roles(list(roles))
    return ",".join(r.value for r in Role if r in chosen)
