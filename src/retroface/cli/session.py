"""Who the CLI acts as, and the application context it acts on.

Identity comes from ``RETROFACE_TOKEN`` if set, else from ``--user`` (or ``RETROFACE_USER``)
with a password (``RETROFACE_PASSWORD``, else a prompt). Every command that touches casework or the
gallery acts as that authenticated user, and the domain services check that user's roles.

A token decides who acts, so one shell can play several people (``RETROFACE_TOKEN=$olive
retroface ...``) while ``RETROFACE_USER`` names the default password user; a ``--user`` given on
the command line must name the token's owner, so a leftover token never acts silently for someone
else.

With ``RETROFACE_URL`` (or ``--server URL``) set, the casework commands send the same credentials
to that server instead (:meth:`CliState.remote`, :mod:`retroface.cli.remote`); ``--local`` ignores
it for one command.
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
    from retroface.cli.remote import Remote
    from retroface.context import AppContext
    from retroface.core.access import Principal


@dataclass
class CliState:
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    #: ``--server URL`` (else ``RETROFACE_URL``); ``--local`` ignores both.
    server: str | None = None
    local: bool = False
    _principal: Principal | None = None
    _remote: Remote | None = None

    @cached_property
    def ctx(self) -> AppContext:
        # imported here, not above: the context wires every service (SQLAlchemy, the models'
        # runtime, ...), 0.8 s that `--help` and the commands that need no context never pay
        from retroface.context import AppContext

        return AppContext()

    def server_url(self) -> str | None:
        """The server the casework commands go through, or None to work locally."""
        if self.local:
            return None
        return self.server or os.environ.get("RETROFACE_URL") or None

    def remote(self) -> Remote | None:
        """The signed-in server client when a server is named (see :meth:`server_url`)."""
        if self._remote is not None:
            return self._remote
        url = self.server_url()
        if url is None:
            return None
        from retroface.cli.common import fail
        from retroface.cli.remote import Remote

        remote = Remote(url)
        token = self.token or os.environ.get("RETROFACE_TOKEN")
        try:
            if token:
                remote.sign_in(token, None, False, "")
                if self.user:
                    owner = str(remote.call("GET", "/me")["username"])
                    self._check_owner(owner)
            else:
                user = self._password_user()
                remote.sign_in(None, user, bool(self.user), self._password(user))
        except UserError as exc:
            fail(str(exc))
        self._remote = remote
        return remote

    def _check_owner(self, owner: str) -> None:
        if self.user and self.user.strip().lower() != owner:
            raise UserError(
                f"--user {self.user} but RETROFACE_TOKEN belongs to {owner}: "
                "drop --user or unset RETROFACE_TOKEN"
            )

    def _password_user(self) -> str:
        user = self.user or os.environ.get("RETROFACE_USER")
        if not user:
            raise UserError(
                "this command acts as a named user: pass --user NAME (or set RETROFACE_USER) "
                "with RETROFACE_PASSWORD or RETROFACE_TOKEN; first time? run `retroface init`"
            )
        return user

    def _password(self, user: str) -> str:
        password = os.environ.get("RETROFACE_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise UserError(
                    f"no password for {user}: set RETROFACE_PASSWORD or RETROFACE_TOKEN"
                )
            password = getpass.getpass(f"Password for {user}: ")
        return password

    def principal(self) -> Principal:
        if self._principal is not None:
            return self._principal
        token = self.token or os.environ.get("RETROFACE_TOKEN")
        if token:
            principal = _from_cli(self.ctx.users.authenticate_token(token))
            self._check_owner(principal.username)
            self._principal = principal
            return self._principal
        user = self._password_user()
        from_env = "RETROFACE_PASSWORD" in os.environ
        password = self._password(user)
        if from_env and self.user:
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
