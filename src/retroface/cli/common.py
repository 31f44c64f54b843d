"""Shared CLI plumbing: one console, JSON output and clean errors instead of tracebacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NoReturn

import typer
from rich.console import Console

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
    from retroface.vision.engines import engine_from_settings

    with user_errors():
        return engine_from_settings()


def with_status(message: str, fn: Callable[[], Any], quiet: bool = False) -> Any:
    if quiet:
        return fn()
    with err_console.status(message):
        return fn()
