"""Who the CLI acts as, and the application context it acts on.

Identity comes from ``--user`` (or ``RETROFACE_USER``) with ``RETROFACE_TOKEN`` or a password
(``RETROFACE_PASSWORD``, else a prompt). Every command that touches casework or the gallery acts
as that authenticated user, and the domain services check that user's roles.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property

from retroface.cli.common import UserError
from retroface.context import AppContext
from retroface.core.access import Principal


@dataclass
class CliState:
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    _principal: Principal | None = None

    @cached_property
    def ctx(self) -> AppContext:
        return AppContext()

    def principal(self) -> Principal:
        if self._principal is not None:
            return self._principal
        token = self.token or os.environ.get("RETROFACE_TOKEN")
        if token:
            self._principal = self.ctx.users.authenticate_token(token)
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
        self._principal = self.ctx.users.authenticate_password(user, password)
        return self._principal


state = CliState()
