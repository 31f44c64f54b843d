"""The README as a new user follows it: the "Using it" shell block runs as written.

The block is executed with ``bash -euo pipefail`` on a fresh home (``HOME`` is a temporary folder,
so the README's ``~/.retroface`` is new and empty) with the real `retroface` command, real models
and real faces, so any drift between the README and the CLI fails CI. Two substitutions only, both
about where things are rather than what is run: ``source .venv/bin/activate`` becomes a no-op
because the venv of this checkout is already first on PATH, and ``../shared/data`` becomes the
test data folder (``RETROFACE_TEST_DATA`` if set).

Also kept true here: the README's configuration table names every setting, and ``retroface demo``
prints the names of the users it creates with a sign-in line that works.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import DATA_DIR

from retroface.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The checkout's venv: `retroface` is installed next to the interpreter running the tests.
VENV_BIN = Path(sys.executable).parent


def section(markdown: str, heading: str) -> str:
    """The text under a ``## heading``, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def bash_blocks(markdown: str) -> list[str]:
    """The fenced ```bash blocks, in order."""
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.M | re.S)


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without any RETROFACE_* setting, HOME a fresh folder and the
    checkout's venv first on PATH: what a new user has after ``source .venv/bin/activate``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETROFACE_")}
    env["HOME"] = str(home)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # Keep rich from wrapping tables to a guessed terminal width in captured output.
    env["COLUMNS"] = "120"
    return env


def runnable(script: str) -> str:
    """The README block with the checkout's venv and data folder (see the module docstring)."""
    assert "…" not in script, "a placeholder (…) in a block that must run as written"
    script = script.replace("source .venv/bin/activate", ": venv already on PATH")
    return script.replace("../shared/data", shlex.quote(str(DATA_DIR)))


def test_using_it_runs_as_written(tmp_path: Path) -> None:
    if not (DATA_DIR / "lfw").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}: set RETROFACE_TEST_DATA")
    assert (VENV_BIN / "retroface").exists(), f"no retroface next to {sys.executable}"
    blocks = bash_blocks(section(README.read_text(encoding="utf-8"), "Using it"))
    assert blocks, "no ```bash block under '## Using it'"
    script = "\n".join(runnable(b) for b in blocks)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"README block failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    # Each step did what the README says it does, as the right person.
    assert "administrator admin created" in out
    for name in ("olive", "arthur", "rita", "rob", "aud"):
        assert f"user {name} added" in out
    assert "case CR/123/26: approved" in out
    # the LFW probe of Joe Biden finds his (non-LFW) gallery photos at rank 1
    first = re.search(r'"candidates": \[\s*\{[^}]*?"subject": "([^"]+)"', out)
    assert first and first.group(1) == "joe_biden", out
    assert "5 searched, 0 failed" in out  # the batch: a folder of four stills and one more
    assert "lin_manuel_miranda" in out  # the video track's person is in the candidate list
    assert "second review recorded; status agreed" in out
    assert "audit log intact" in out
    assert "due: 0 probe(s)" in out
    assert "authorisations: 1 granted" in out
    assert (tmp_path / ".retroface" / "retroface.db").exists()


def test_configuration_table_names_every_setting() -> None:
    table = section(README.read_text(encoding="utf-8"), "Configuration")
    documented = set(re.findall(r"^\| `(RETROFACE_[A-Z_]+)`", table, re.M))
    settings = {f"RETROFACE_{name.upper()}" for name in Settings.model_fields}
    # The CLI's sign-in and server variables and the data key are read outside Settings; list
    # them too.
    others = {
        "RETROFACE_USER",
        "RETROFACE_PASSWORD",
        "RETROFACE_TOKEN",
        "RETROFACE_NEW_PASSWORD",
        "RETROFACE_DATA_KEY",
        "RETROFACE_URL",
        "RETROFACE_CA_BUNDLE",
    }
    missing = (settings | others) - documented
    assert not missing, f"settings missing from the README's table: {sorted(missing)}"
    assert documented <= settings | others | {"RETROFACE_TEST_DATA", "RETROFACE_EVAL_CACHE"}


def test_demo_names_its_users_and_how_to_sign_in(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = clean_env(tmp_path)
    demo = subprocess.run(
        [
            str(VENV_BIN / "retroface"),
            *("demo", "--data", str(DATA_DIR), "--home", str(home), "--distractors", "2"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for who in ("admin (admin)", "olive (operator)", "arthur (authoriser)", "rita (reviewer)"):
        assert who in demo.stdout
    assert "rob (reviewer)" in demo.stdout and "aud (auditor)" in demo.stdout
    line = next(x for x in demo.stdout.splitlines() if x.startswith("act as one of them: "))
    signed_in = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line.removeprefix("act as one of them: ")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert signed_in.returncode == 0, signed_in.stdout + signed_in.stderr
    assert "audit log intact" in signed_in.stdout
