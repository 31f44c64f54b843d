"""The role check every domain service makes, with the refusal written to the audit log.

A refused action leaves a trace as surely as an allowed one: :meth:`Guard.require` records
``<action>.refused`` in a transaction of its own (the action itself never started, so there is no
caller's transaction to join) and then raises. :meth:`Guard.refused` does the same for refusals
that are not about roles (an unauthorised case, a blind review), so an auditor sees every attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retroface.core.access import AuditFn, Principal, require_role
from retroface.core.clock import Clock, utcnow
from retroface.core.errors import PermissionDeniedError, RetrofaceError
from retroface.core.roles import Role
from retroface.storage.db import Database


class Guard:
    def __init__(self, db: Database, audit: AuditFn, clock: Clock = utcnow) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    def require(
        self,
        principal: Principal,
        *roles: Role,
        action: str,
        case_ref: str | None = None,
        object_type: str | None = None,
        object_id: str | int | None = None,
    ) -> None:
        """Return if ``principal`` holds one of ``roles``; else audit the refusal and raise."""
        try:
            require_role(principal, *roles)
        except PermissionDeniedError as exc:
            self.refused(
                principal,
                action,
                exc,
                case_ref=case_ref,
                object_type=object_type,
                object_id=object_id,
                details={"needed": sorted(r.value for r in roles)},
            )
            raise

    def refused(
        self,
        principal: Principal,
        action: str,
        error: RetrofaceError,
        *,
        case_ref: str | None = None,
        object_type: str | None = None,
        object_id: str | int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``<action>.refused`` with the reason; the caller raises ``error`` afterwards."""
        with self.db.session() as s:
            self.audit(
                s,
                actor=principal,
                action=f"{action}.refused",
                case_ref=case_ref,
                object_type=object_type,
                object_id=object_id,
                details={
                    "reason": error.code,
                    "message": error.message[:500],
                    "roles": sorted(r.value for r in principal.roles),
                    **(details or {}),
                },
                ts=self.clock(),
            )
