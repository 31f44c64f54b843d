"""The database schema on the command line: ``db upgrade`` and ``db current``.

Both work on the configured database (``RETROFACE_DATABASE_URL``, else SQLite in
``RETROFACE_HOME``) and need no sign-in: a schema is upgraded before anyone can sign in, by whoever
runs the deployment. ``upgrade`` is audited (``schema.upgrade``, see
:mod:`retroface.governance.schema`) when it changes anything.
"""

from __future__ import annotations

import getpass
import re

import typer

from retroface.cli.common import console, print_json, user_errors
from retroface.cli.session import state

app = typer.Typer(help="The database schema: upgrade, current.", no_args_is_help=True)


def _redacted(url: str) -> str:
    """The URL without a password (``user:secret@`` becomes ``user:***@``)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _who() -> str:
    try:
        return f"retroface db upgrade (os user {getpass.getuser()})"
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return "retroface db upgrade"


@app.command("upgrade")
def upgrade(json_out: bool = typer.Option(False, "--json")) -> None:
    """Run the migrations to the newest revision (idempotent); prints from → to."""
    with user_errors():
        ctx = state.ctx
        ctx.db  # opening the database migrates it  # noqa: B018
        change = ctx.schema_change
        assert change is not None
        ctx.schema.record_upgrade(change, by=_who())
        url = _redacted(ctx.settings.resolved_database_url)
    if json_out:
        print_json(
            {
                "database": url,
                "dialect": change.dialect,
                "from": change.before,
                "to": change.after,
                "changed": change.changed,
            }
        )
        return
    if change.changed:
        console.print(
            f"{url}: schema upgraded from {change.before or '(empty database)'} to {change.after}",
            highlight=False,
        )
    else:
        console.print(f"{url}: schema already at {change.after}; nothing to do", highlight=False)


@app.command("current")
def current(json_out: bool = typer.Option(False, "--json")) -> None:
    """The database's schema revision and the newest one this version ships (changes nothing)."""
    from retroface.config import get_settings
    from retroface.governance.schema import schema_state
    from retroface.storage.db import Database

    with user_errors():
        url = get_settings().resolved_database_url
        db = Database(url)
        try:
            st = schema_state(db)
        finally:
            db.dispose()
    if json_out:
        print_json(
            {
                "database": _redacted(url),
                "dialect": st.dialect,
                "revision": st.revision,
                "head": st.head,
                "at_head": st.at_head,
            }
        )
        return
    where = f"{_redacted(url)}: revision {st.revision or '(empty database)'}"
    if st.at_head:
        console.print(f"{where} (head)", highlight=False)
    else:
        console.print(f"{where}; newest is {st.head}: run `retroface db upgrade`", highlight=False)
