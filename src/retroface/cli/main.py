"""The `retroface` command."""

from __future__ import annotations

import typer

from retroface import __version__
from retroface.cli import (
    admin_cmds,
    casework_cmds,
    db_cmds,
    demo_cmds,
    eval_cmds,
    gallery_cmds,
    probe_cmds,
    report_cmds,
    video_cmds,
    vision_cmds,
)
from retroface.cli.session import state

app = typer.Typer(
    name="retroface",
    help="Open, accountable retrospective facial recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    user: str | None = typer.Option(
        None,
        "--user",
        help="Act as this user (default: RETROFACE_USER), signing in with RETROFACE_PASSWORD or "
        "a prompt; with RETROFACE_TOKEN set it must name the token's owner.",
    ),
    server: str | None = typer.Option(
        None,
        "--server",
        help="Send casework commands (case, search, review, probe enhance) to this retroface "
        "server's API (default: RETROFACE_URL); TLS verified, RETROFACE_CA_BUNDLE for a "
        "private CA.",
        show_default=False,
    ),
    local: bool = typer.Option(
        False, "--local", help="Work on this machine's data even if RETROFACE_URL is set."
    ),
) -> None:
    """retroface: every search needs a case and an authorisation; results are leads for review."""
    # No envvar= here: the session reads RETROFACE_USER itself, so that only a --user typed on
    # the command line is checked against RETROFACE_TOKEN's owner; RETROFACE_URL likewise.
    if server and local:
        from retroface.cli.common import fail

        fail("give --server URL or --local, not both")
    state.user = user
    state.server = server
    state.local = local


app.command()(vision_cmds.detect)
app.command()(vision_cmds.compare)
app.command()(vision_cmds.models)
app.command()(admin_cmds.init)
app.command()(demo_cmds.demo)
app.command()(admin_cmds.serve)
app.command()(casework_cmds.search)
app.add_typer(gallery_cmds.app, name="gallery")
app.add_typer(casework_cmds.case_app, name="case")
app.add_typer(casework_cmds.review_app, name="review")
app.add_typer(probe_cmds.app, name="probe")
app.add_typer(admin_cmds.user_app, name="user")
app.add_typer(admin_cmds.audit_app, name="audit")
app.add_typer(admin_cmds.retention_app, name="retention")
app.add_typer(report_cmds.app, name="report")
app.add_typer(eval_cmds.app, name="eval")
app.add_typer(video_cmds.app, name="video")
app.add_typer(db_cmds.app, name="db")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
