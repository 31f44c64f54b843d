"""Who the CLI acts as, and the application context it acts on.

Identity comes from ``RETROFACE_TOKEN`` if set, else from ``--user`` (or ``RETROFACE_USER``)
with a password (``RETROFACE_PASSWORD``, else a prompt). Every command that touches casework or the
gallery acts as that authenticated user, and the domain services check that user's roles.

A token decides who acts, so one shell can play several people (``RETROFACE_TOKEN=$olive
retroface ...``) while ``RETROFACE_USER`` names the default password user; a ``--user`` given on
the command line must name the token's owner, so a leftover token never acts silently for someone
else.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from retroface.cli.common import UserError

if TYPE_CHECKING:
    from retroface.context import AppContext
    from retroface.core.access import Principal


@dataclass
class CliState:
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    _principal: Principal | None = None

    @cached_property
    def ctx(self) -> AppContext:
        # imported here, not above: the context wires every service (SQLAlchemy, the models'
        # runtime, ...), 0.8 s that `--help` and the commands that need no context never pay
        from retroface.context import AppContext

        return AppContext()

    def principal(self) -> Principal:
        if self._principal is not None:
            return self._principal
        token = self.token or os.environ.get("RETROFACE_TOKEN")
        if token:
            principal = _from_cli(self.ctx.users.authenticate_token(token))
            if self.user and self.user.strip().lower() != principal.username:
                raise UserError(
                    f"--user {self.user} but RETROFACE_TOKEN belongs to {principal.username}: "
                    "drop --user or unset RETROFACE_TOKEN"
                )
            self._principal = principal
            return self._principal
        user = self.user or os.environ.get("RETROFACE_USER")
        if not user:
            raise UserError(
                "this command acts as a named user: pass --user NAME (or set RETROFACE_USER) "
                "with RETROFACE_PASSWORD or RETROFACE_TOKEN; first time? run `retroface init`"
            )
        password = os.environ.get("RETROFACE_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise UserError(
                    f"no password for {user}: set RETROFACE_PASSWORD or RETROFACE_TOKEN"
                )
            password = getpass.getpass(f"Password for {user}: ")
        elif self.user:
            from retroface.core.errors import PermissionDeniedError

            # RETROFACE_PASSWORD is tried for whichever user is named: say so, since an admin's
            # exported password used with `--user olive` otherwise reads as a plain refusal.
            try:
                self._principal = _from_cli(self.ctx.users.authenticate_password(user, password))
            except PermissionDeniedError as exc:
                raise UserError(
                    f"{exc.message} (the password came from RETROFACE_PASSWORD, used for "
                    f"--user {user}; give each user their own, or use RETROFACE_TOKEN)"
                ) from None
            return self._principal
        self._principal = _from_cli(self.ctx.users.authenticate_password(user, password))
        return self._principal


def _from_cli(principal: Principal) -> Principal:
    """Audit records of CLI actions say so ("cli-token:17", "cli-password").

    The CLI passes no client to the login throttle: it runs on the host, as someone who can
    already read the database; the per-account lockout still applies.
    """
    return dataclasses.replace(principal, credential=f"cli-{principal.credential}")


state = CliState()
