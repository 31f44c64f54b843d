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
    from retroface.search.views import ProbeLineage, SearchResult

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

    try:
        yield
    except (UserError, RetrofaceError) as exc:
        fail(str(exc))
    except Exception as exc:
        # Image and model errors are recognised without importing their modules (NumPy, the
        # models' code): an error of that kind can only come from a module already loaded, and
        # a remote command, which loads neither, stays light (tests/test_cli_remote.py).
        if isinstance(exc, _loaded_classes()):
            fail(str(exc))
        raise


def _loaded_classes() -> tuple[type[BaseException], ...]:
    found = []
    for module, name in (
        ("retroface.media.images", "ImageLoadError"),
        ("retroface.vision.weights", "ModelUnavailableError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


@lru_cache(maxsize=1)
def engine() -> Any:
    """The face engine from settings, built once per process."""
    from retroface.config import get_settings
    from retroface.vision.engines import build_engine

    with user_errors():
        return build_engine(get_settings())


def describe_lineage(lineage: ProbeLineage) -> list[str]:
    """The chain as lines: original hash, each version's steps and hash."""
    lines = [f"original probe {lineage.original_probe_id}  sha256 {lineage.original_sha256}"]
    for d in lineage.derivations:
        steps = ", ".join(
            d_step["op"] + "(" + ", ".join(f"{k}={v}" for k, v in d_step.items() if k != "op") + ")"
            for d_step in d.steps
        )
        lines.append(f"  -> {steps}")
        lines.append(
            f"probe {d.probe_id}  sha256 {d.output_sha256}  ({d.width}x{d.height}, by {d.by})"
        )
    return lines


def print_search_result(data: SearchResult) -> None:
    """A candidate list as a table (``retroface search``, image or video probe), with where the
    operating threshold lies and, per candidate, whether it reaches it."""
    from rich.table import Table

    console.print(f"[bold]Search {data.search_id}[/] — [yellow]{data.label}[/]")
    if data.probe.lineage is not None:  # an enhanced version was searched: say which
        console.print("[bold]probe version searched[/] (enhanced):")
        for line in describe_lineage(data.probe.lineage):
            console.print("  " + line, highlight=False)
    warnings = data.probe.warnings
    outlook = data.probe.quality.get("outlook")
    if outlook:  # the calibrated probe quality model's expectation, recorded with the search
        console.print(f"probe verdict: {data.probe.quality.get('verdict')}: {outlook}")
    if warnings:
        console.print("[yellow]probe quality warnings:[/] " + "; ".join(warnings))
    console.print(threshold_line(data.mode, data.operating_threshold, data.operating_source))
    if data.threshold_source == "explicit" and data.threshold is not None:
        console.print(f"explicit threshold {data.threshold:.4f} applied")
    if data.none_above_threshold:
        console.print(
            f"[bold]{data.message}[/] (nothing goes to review)"
            if not data.candidates
            else f"[bold]{data.message}[/]"
        )
    if not data.candidates:
        if not data.none_above_threshold:
            console.print("no candidates" + (" above the threshold" if data.threshold else ""))
        return
    table = Table()
    for col in ("rank", "subject", "similarity", "threshold", "image"):
        table.add_column(col)
    for c in data.candidates:
        mark = {True: "above", False: "below", None: ""}[c.above_threshold]
        table.add_row(str(c.rank), c.subject, f"{c.similarity:.3f}", mark, str(c.image_id))
    console.print(table)
    for c in data.candidates:  # references enrolled below a quality minimum (flagged)
        if c.reference_warnings:
            console.print(
                f"[yellow]rank {c.rank}: reference image below quality minimums:[/] "
                + "; ".join(c.reference_warnings),
                highlight=False,
            )
    console.print(f"gallery version {data.gallery_version}, model {data.model}")


def threshold_line(mode: str, operating: float | None, source: str | None) -> str:
    """Where the operating threshold lies, in one line (search results and review sheets)."""
    if operating is None:
        where = "no operating threshold for this model (calibrate it: `retroface eval calibrate`)"
    else:
        where = f"operating threshold {operating:.4f} ({source})"
    if mode == "investigation":
        return f"{where}; [bold]investigation mode[/]: top-k listed whatever their score"
    return where


def with_status(message: str, fn: Callable[[], Any], quiet: bool = False) -> Any:
    if quiet:
        return fn()
    with err_console.status(message):
        return fn()
