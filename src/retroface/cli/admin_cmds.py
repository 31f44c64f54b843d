"""Accounts, audit and retention on the command line."""

from __future__ import annotations

import dataclasses
import getpass
import os
import sys
from datetime import timedelta
from pathlib import Path

import typer
from rich.table import Table

from retroface.cli.common import console, fail, print_json, user_errors
from retroface.cli.session import state

user_app = typer.Typer(help="User accounts: add, list, disable, token.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log: verify, export.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention: purge what is due.", no_args_is_help=True)


def _new_password(prompt_for: str) -> str:
    password = os.environ.get("RETROFACE_NEW_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        fail(f"set RETROFACE_NEW_PASSWORD for {prompt_for} (no terminal to prompt on)")
    first = getpass.getpass(f"New password for {prompt_for}: ")
    if first != getpass.getpass("Repeat: "):
        fail("passwords differ")
    return first


def init(
    admin: str = typer.Option("admin", help="Name of the first administrator."),
) -> None:
    """First run: create the data directory, keys, schema and the first admin account.

    The admin's password comes from RETROFACE_NEW_PASSWORD if set (scripts, CI), else a prompt.
    """
    with user_errors():
        ctx = state.ctx
        created = ctx.users.ensure_admin(admin, _new_password(admin))
        ctx.audit.public_key_pem()
    console.print(f"data directory: {ctx.home}")
    if created:
        console.print(f"administrator {admin} created")
    else:
        console.print("an administrator already exists; nothing changed")


@user_app.command("add")
def user_add(
    username: str,
    roles: str = typer.Option(
        ..., help="Comma-separated: admin,operator,reviewer,authoriser,auditor,oversight."
    ),
    display_name: str | None = typer.Option(None),
    token_only: bool = typer.Option(
        False,
        "--service",
        "--token-only",
        help="A service account (another system): no password; admins issue its tokens.",
    ),
) -> None:
    """Create an account (admin only); password: RETROFACE_NEW_PASSWORD if set, else a prompt."""
    with user_errors():
        actor = state.principal()
        password = None if token_only else _new_password(username)
        p = state.ctx.users.add(actor, username, roles, password, display_name, service=token_only)
    console.print(f"user {p.username} added with roles {', '.join(sorted(p.roles))}")


@user_app.command("list")
def user_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """All accounts."""
    with user_errors():
        users = state.ctx.users.list(state.principal())
    if json_out:
        print_json({"users": [u.model_dump(mode="json") for u in users]})
        return
    table = Table()
    for col in ("username", "roles", "active", "created"):
        table.add_column(col)
    for u in users:
        table.add_row(
            u.username,
            ",".join(sorted(u.roles)),
            "yes" if u.active else "no",
            f"{u.created_at:%Y-%m-%d}",
        )
    console.print(table)


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable an account and revoke its tokens."""
    with user_errors():
        changed = state.ctx.users.disable(state.principal(), username)
    console.print(f"user {username} " + ("disabled" if changed else "was already disabled"))


@user_app.command("token")
def user_token(
    username: str | None = typer.Argument(
        None, help="Whose token: yourself, or (admins) a service account."
    ),
    name: str = typer.Option("cli", help="A label for the token."),
    days: float = typer.Option(30, help="Validity in days."),
) -> None:
    """Issue an API token (shown once; stored only as a hash)."""
    with user_errors():
        actor = state.principal()
        token = state.ctx.users.issue_token(
            actor, username or actor.username, name, timedelta(days=days)
        )
    typer.echo(token)


@audit_app.command("verify")
def audit_verify(
    json_out: bool = typer.Option(False, "--json"),
    against: Path | None = typer.Option(
        None, "--against", help="An earlier export: prove the log still holds it unchanged."
    ),
) -> None:
    """Check the chain, signed checkpoints and anchor; exit 1 and name the first bad record."""
    with user_errors():
        result = state.ctx.oversight.verify_audit(state.principal(), against=against)
    if json_out:
        print_json(dataclasses.asdict(result))
    elif result.ok:
        console.print(
            f"[green]audit log intact[/]: {result.checked} records, "
            f"{result.checkpoints_verified} signed checkpoints, "
            f"signed through record {result.signed_through}"
        )
    else:
        console.print(f"[bold red]audit log TAMPERED[/]: {result.problem}")
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    out: Path = typer.Argument(..., help="Folder to write (JSONL, checkpoints, public key)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Export the log for offline verification (`retroface audit verify-export`)."""
    with user_errors():
        manifest = state.ctx.oversight.export_audit(state.principal(), out)
    if json_out:
        print_json(manifest)
        return
    console.print(f"audit log exported to {out}")


@audit_app.command("verify-export")
def audit_verify_export(
    folder: Path,
    public_key: Path | None = typer.Option(
        None, help="Trusted public key PEM (default: the one in the export)."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Verify an export offline, without the database."""
    from retroface.audit.log import verify_export

    with user_errors():
        keys = public_key.read_text() if public_key else None
        result = verify_export(folder, keys)
    if json_out:
        print_json(dataclasses.asdict(result))
    elif result.ok:
        console.print(f"[green]export intact[/]: {result.checked} records")
    else:
        console.print(f"[bold red]export TAMPERED[/]: {result.problem}")
    if not result.ok:
        raise typer.Exit(1)


@retention_app.command("run")
def retention_run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report what is due."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Delete probes, results, expired urgent cases and subjects whose retention has ended."""
    with user_errors():
        report = state.ctx.retention.run(state.principal(), dry_run=dry_run)
    if json_out:
        print_json(report.model_dump(mode="json"))
        return
    verb = "due" if dry_run else "deleted"
    console.print(
        f"{verb}: {report.probes_deleted} probe(s), {report.searches_deleted} search record(s), "
        f"{len(report.subjects_erased)} subject(s), "
        f"{len(report.urgent_cases_expired)} expired urgent case(s)"
    )


#: How long ``serve`` keeps an idle HTTP connection open. uvicorn's default, 5 s, equals the
#: idle expiry of httpx's pool (and is shorter than most proxies'): a client reusing a connection
#: just as the server closed it got a ``ReadError`` for a request the server never saw (1 in
#: 1,324 searches under bench/pg_load.py). A server should outlast its clients' idle timeout.
KEEP_ALIVE_SECONDS = 75


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535),
    log_level: str = typer.Option("info"),
) -> None:
    """Run the REST API and the web pages with uvicorn (pages at /ui/, API docs at /api/v1/docs)."""
    import uvicorn

    from retroface.api.app import create_app
    from retroface.api.observability import configure_logging

    configure_logging()
    with user_errors():
        ctx = state.ctx
        app = create_app(ctx)
        ctx.engine  # load the models before the first request  # noqa: B018
        ctx.db  # noqa: B018
        if ctx.schema_change is not None:  # a schema this start-up upgraded is audited
            ctx.schema.record_upgrade(ctx.schema_change, by="retroface serve")
    # browsers send the Secure session cookie over plain HTTP to localhost only
    page_host = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    console.print(f"retroface API on http://{host}:{port}/api/v1/docs", highlight=False)
    console.print(f"web pages on http://{page_host}:{port}/ui/", highlight=False)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
