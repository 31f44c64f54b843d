"""docs/api.md as a user follows it: its curl examples run, in order, against a real server.

A fresh data directory gets its administrator from ``retroface init`` (the password the page
names, through ``RETROFACE_NEW_PASSWORD``), ``retroface serve`` starts on a free loopback port, and
every ```bash block of the page runs in one ``bash -euo pipefail`` shell, so variables set by an
earlier block (the API address, tokens, probe and search ids) reach the later ones. The examples
use ``curl --fail-with-body``: any error status fails the run. Substituted, as in the README test:
the port (8000 in the page) and the shared data folder.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import DATA_DIR
from tests.test_readme import ROOT, VENV_BIN, bash_blocks, clean_env

API_DOC = ROOT / "docs" / "api.md"
ADMIN_PASSWORD = "admin: a long passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_documents(text: str) -> list[dict[str, object]]:
    """The JSON objects in ``text``, in order, however they are separated."""
    decoder = json.JSONDecoder()
    found, at = [], text.find("{")
    while at != -1:
        doc, end = decoder.raw_decode(text, at)
        found.append(doc)
        at = text.find("{", end)
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``retroface serve`` on a fresh home with its first administrator; stopped afterwards."""
    env = clean_env(tmp_path) | {"RETROFACE_HOME": str(tmp_path / "home")}
    init = subprocess.run(
        [str(VENV_BIN / "retroface"), "init", "--admin", "admin"],
        env=env | {"RETROFACE_NEW_PASSWORD": ADMIN_PASSWORD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "retroface"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180  # model loading on a busy machine
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("server did not start:\n" + (tmp_path / "serve.log").read_text())
                time.sleep(0.5)
        yield port, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_api_doc_examples_run_as_written(server: tuple[int, dict[str, str]]) -> None:
    port, env = server
    text = API_DOC.read_text(encoding="utf-8")
    assert ADMIN_PASSWORD in text, "the page no longer names the password this test creates"
    blocks = bash_blocks(text)
    assert len(blocks) >= 2, "docs/api.md lost its curl examples"
    script = "\n".join(blocks)
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "…" not in code, "a placeholder (…) in an example that must run as written"
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace("../shared/data", shlex.quote(str(DATA_DIR)))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"docs/api.md examples failed:\n{done.stdout}\n{done.stderr}"
    # curl prints the answers back to back (no newline after each)
    answers = json_documents(done.stdout)
    assert answers[0]["token_type"] == "bearer"
    assert any(a.get("status") == "approved" for a in answers)
    searched = next(a for a in answers if "candidates" in a and "label" in a)
    assert searched["candidates"][0]["subject"] == "joe_biden"
    assert any(a.get("status") == "agreed" for a in answers)
    assert '"joe_biden"' in json.dumps(next(a for a in answers if "disclosure" in a))
    # several probes in one request: one entry per file, in order, a failed one in its place
    batch = [a for a in answers if "input" in a]
    assert [a["input"] for a in batch] == ["Joseph_Biden_0003.jpg", "obama_and_biden.jpg"]
    assert batch[0]["candidates"][0]["subject"] == "joe_biden"
    assert batch[1]["error"]["code"] == "several_faces"
    # the oversight figures count this month's work and name nobody; the oversight account is
    # refused the case list (the status code is printed after the figures)
    figures = next(a for a in answers if a.get("report") == "oversight")
    now = figures["months"][-1]
    # one search, one of the enhanced version, one of the batch
    assert now["searches"]["run"] == 3 and now["reviews"]["agreed"] == 1
    assert now["authorisations"]["granted"] == 1
    named = json.dumps(figures)
    assert not any(n in named for n in ("joe_biden", "CR/1/26", "olive", "arthur", "rita"))
    assert done.stdout.rstrip().endswith("403")
