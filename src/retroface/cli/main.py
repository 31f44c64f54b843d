"""The `retroface` command."""

from __future__ import annotations

import typer

from retroface import __version__
from retroface.cli import vision_cmds

app = typer.Typer(
    name="retroface",
    help="Open, accountable retrospective facial recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(vision_cmds.detect)
app.command()(vision_cmds.compare)
app.command()(vision_cmds.models)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
