"""Shared CLI plumbing: one console, JSON output and clean errors instead of tracebacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from retroface.search.views import SearchResult

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """Anything the user can fix; printed as one line, exit status 2."""


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one clear line and exit status 2."""
    from retroface.core.errors import RetrofaceError
    from retroface.media.images import ImageLoadError
    from retroface.vision.weights import ModelUnavailableError

    try:
        yield
    except (ImageLoadError, ModelUnavailableError, UserError, RetrofaceError) as exc:
        fail(str(exc))


@lru_cache(maxsize=1)
def engine() -> Any:
    """The face engine from settings, built once per process."""
    from retroface.config import get_settings
    from retroface.vision.engines import build_engine

    with user_errors():
        return build_engine(get_settings())


def print_search_result(data: SearchResult) -> None:
    """A candidate list as a table (``retroface search``, image or video probe)."""
    from rich.table import Table

    console.print(f"[bold]Search {data.search_id}[/] — [yellow]{data.label}[/]")
    warnings = data.probe.warnings
    outlook = data.probe.quality.get("outlook")
    if outlook:  # the calibrated probe quality model's expectation, recorded with the search
        console.print(f"probe verdict: {data.probe.quality.get('verdict')}: {outlook}")
    if warnings:
        console.print("[yellow]probe quality warnings:[/] " + "; ".join(warnings))
    if not data.candidates:
        console.print("no candidates" + (" above the threshold" if data.threshold else ""))
        return
    table = Table()
    for col in ("rank", "subject", "similarity", "image"):
        table.add_column(col)
    for c in data.candidates:
        table.add_row(str(c.rank), c.subject, f"{c.similarity:.3f}", str(c.image_id))
    console.print(table)
    console.print(f"gallery version {data.gallery_version}, model {data.model}")


def with_status(message: str, fn: Callable[[], Any], quiet: bool = False) -> Any:
    if quiet:
        return fn()
    with err_console.status(message):
        return fn()
