"""The command line starts without loading what its commands do not need.

``retroface --help``, ``retroface version`` and every command's parsing run before any command
body; importing the database layer, the face models, OpenCV or the web framework there cost every
call 2.2 s (issue #16). Each command imports its own dependencies in its body, so the start-up is
what Typer and Rich cost. This is a correctness test of which modules get imported (in a fresh
interpreter), not a timing test: the timings are in docs/performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: What no command needs before its body runs: each costs 0.1–0.8 s to import here. (Pydantic is
#: not listed: Typer 0.29 itself converts command-line values with it.)
HEAVY = (
    "sqlalchemy",
    "onnxruntime",
    "cv2",
    "numpy",
    "fastapi",
    "starlette",
    "retroface.context",
    "retroface.config",
    "retroface.audit",
    "retroface.search",
    "retroface.vision",
)


def _modules_after(code: str) -> set[str]:
    """The top-level and retroface modules loaded by ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(h for h in HEAVY if h in modules)


def test_importing_the_cli_loads_nothing_heavy() -> None:
    modules = _modules_after("import retroface.cli.main")
    assert "retroface.cli.main" in modules and "typer" in modules
    assert _heavy(modules) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["version"],
        ["search", "--help"],
        ["case", "--help"],
        ["gallery", "--help"],
        ["db", "--help"],
    ],
)
def test_help_and_version_load_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from retroface.cli.main import app\n"
        "try:\n"
        f"    app({argv!r}, prog_name='retroface')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    assert _heavy(_modules_after(code)) == []
