"""The `retroface` command as a user runs it: JSON outputs, clear errors, the full workflow."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from retroface.cli.main import app as cli_app
from retroface.cli.session import state
from retroface.config import Settings, get_settings
from retroface.context import AppContext
from retroface.vision.types import FaceEngine

PASSWORD = "a long test password"
Run = Callable[..., tuple[int, str]]


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, engine: FaceEngine
) -> Iterator[Run]:
    """Invoke the CLI in-process, as ``user``, on a fresh data directory and database."""
    home = tmp_path / "home"
    monkeypatch.setenv("RETROFACE_HOME", str(home))
    monkeypatch.setenv("RETROFACE_DATABASE_URL", database_url)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    monkeypatch.setenv("RETROFACE_NEW_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    contexts: list[AppContext] = []

    def invoke(*args: str, user: str | None = None) -> tuple[int, str]:
        ctx = AppContext(Settings(home=home, database_url=database_url), engine=engine)
        contexts.append(ctx)
        state.__dict__["ctx"] = ctx
        state._principal = None
        argv = (["--user", user] if user else []) + list(args)
        result = CliRunner().invoke(cli_app, argv, catch_exceptions=False)
        return result.exit_code, result.output

    yield invoke
    state.__dict__.pop("ctx", None)
    state._principal = None
    state.user = None
    for ctx in contexts:
        ctx.close()
    get_settings.cache_clear()


def test_detect_json(run: Run, data_dir: Path, tmp_path: Path) -> None:
    out_img = tmp_path / "annotated.jpg"
    image = data_dir / "people/_multi_face_scenes/obama_and_biden.jpg"
    code, out = run("detect", str(image), "--json", "--annotate", str(out_img))
    assert code == 0
    data = json.loads(out)
    assert len(data["faces"]) >= 2
    face = data["faces"][0]
    assert {"box", "landmarks", "det_score", "quality"} <= set(face)
    assert {"inter_eye_px", "sharpness", "yaw_deg", "acceptable", "reasons"} <= set(face["quality"])
    assert out_img.stat().st_size > 10_000


def test_compare(run: Run, data_dir: Path) -> None:
    people = data_dir / "people"
    code, out = run(
        "compare",
        str(people / "barack_obama/obama.jpg"),
        str(people / "barack_obama/obama3.jpg"),
        "--json",
    )
    same = json.loads(out)
    code2, out2 = run(
        "compare",
        str(people / "barack_obama/obama.jpg"),
        str(people / "joe_biden/biden.jpg"),
        "--json",
    )
    diff = json.loads(out2)
    assert code == code2 == 0
    assert same["same_person"] is True and diff["same_person"] is False
    assert same["similarity"] > diff["similarity"] + 0.3


def test_models_states_licence(run: Run) -> None:
    code, out = run("models", "--json")
    assert code == 0
    backends = {b["backend"]: b for b in json.loads(out)["backends"]}
    arc = backends["arcface"]
    assert arc["available"] and arc["default"] and "non-commercial" in arc["licence"]
    assert len(arc["weights"]) == 2 and all(len(w["sha256"]) == 64 for w in arc["weights"])
    assert "dlib" in backends
    code, out = run("models")
    assert "non-commercial research use only" in " ".join(out.split())


@pytest.mark.parametrize(
    "content, message",
    [(b"hello", "not a recognised image file"), (b"", "empty"), (b"\xff\xd8\xff\xe0\x00", "")],
)
def test_bad_input_is_a_clear_error(run: Run, tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    code, out = run("detect", str(bad))
    assert code == 2
    assert "error:" in out and "bad.jpg" in out and message in " ".join(out.split())
    assert "Traceback" not in out
    code, out = run("detect", str(tmp_path / "missing.png"))
    assert code == 2 and "no such file" in out


def test_workflow_through_the_cli(run: Run, data_dir: Path, database_url: str) -> None:
    assert run("init", "--admin", "admin")[0] == 0
    for name, roles in (
        ("olive", "operator"),
        ("arthur", "authoriser"),
        ("rita", "reviewer"),
        ("rob", "reviewer"),
        ("aud", "auditor"),
    ):
        code, out = run("user", "add", name, "--roles", roles, user="admin")
        assert code == 0, out
    code, out = run("gallery", "enrol", str(data_dir / "people"), "--json", user="olive")
    assert code == 2 and "needs the role admin" in out
    code, out = run(
        "gallery",
        "enrol",
        str(data_dir / "people"),
        "--inclusion-reason",
        "custody image",
        "--json",
        user="admin",
    )
    summary = json.loads(out)
    assert code == 0 and summary["enrolled"] >= 15 and summary["subjects"] >= 6
    assert {"enrolled", "rejected", "subjects", "seconds"} <= set(summary)
    assert all(r["reason"] for r in summary["rejected"])

    probe = str(data_dir / "people/barack_obama/obama3.jpg")
    search = ["search", probe, "--source", "CCTV", "--how-obtained", "exhibit AB/1", "--json"]
    code, out = run(*search, "--case", "C1", user="olive")
    assert code == 2 and "no case" in out
    code, out = run(
        "case",
        "open",
        "--ref",
        "C1",
        "--offence",
        "robbery",
        "--purpose",
        "identify the suspect",
        "--justification",
        "serious offence and the only lead we have",
        user="olive",
    )
    assert code == 0, out
    code, out = run(*search, "--case", "C1", user="olive")
    assert code == 2 and "awaiting authorisation" in out
    code, out = run("case", "authorise", "C1", "--approve", "--note", "ok", user="olive")
    assert code == 2 and "authoriser" in out
    code, out = run(
        "case", "authorise", "C1", "--approve", "--note", "proportionate", user="arthur"
    )
    assert code == 0, out
    code, out = run(*search, "--case", "C1", "--top", "5", user="olive")
    assert code == 0, out
    (result,) = json.loads(out)  # one image: an array of one entry
    assert result["input"] == probe
    assert {"probe", "candidates", "gallery_version", "model"} <= set(result)
    assert result["candidates"][0]["subject"] == "barack_obama"
    assert set(result["candidates"][0]) == {
        "rank",
        "subject",
        "similarity",
        "image_id",
        "above_threshold",
        "reference_warnings",  # the matched reference's broken quality minimums (issue #16)
    }
    assert result["candidates"][0]["reference_warnings"] == []
    # only candidates at or above the shipped operating threshold are listed (#13): the others
    # enrolled are different people, below it
    assert [c["subject"] for c in result["candidates"]] == ["barack_obama"]
    assert result["candidates"][0]["above_threshold"] is True
    assert result["mode"] == "operating" and result["threshold_source"] == "shipped"
    assert result["none_above_threshold"] is False and result["message"] is None
    code, out = run(*search, "--case", "C1", "--threshold", "0.5", user="olive")
    assert [c["subject"] for c in json.loads(out)[0]["candidates"]] == ["barack_obama"]
    assert json.loads(out)[0]["threshold_source"] == "explicit"
    code, out = run(*search, "--case", "C1", "--threshold", "0.1", user="olive")
    assert code == 2 and "below the operating threshold" in out

    sid = str(result["search_id"])
    assert (
        run("review", "decide", sid, "--decision", "no match", "--note", "x", user="olive")[0] == 2
    )
    code, out = run(
        "review",
        "decide",
        sid,
        "--decision",
        "possible match",
        "--rank",
        "1",
        "--note",
        "same",
        user="rita",
    )
    assert code == 0, out
    code, out = run("review", "show", sid, "--json", user="rob")
    assert json.loads(out)["hidden"] == 1

    code, out = run("gallery", "remove", "joe_biden", "--reason", "acquitted", user="admin")
    assert code == 0 and "erased joe_biden" in out
    code, out = run("gallery", "show", "joe_biden", user="admin")
    assert code == 2 and "no subject" in out
    code, out = run("gallery", "stats", "--json", user="aud")
    assert json.loads(out)["subjects"] == summary["subjects"] - 1

    code, out = run("audit", "verify", "--json", user="aud")
    assert code == 0 and json.loads(out)["ok"]
    # tamper with one record: verify exits non-zero and names it
    from retroface.storage.db import Database

    db = Database(database_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET actor = 'mallory' WHERE seq = 3"))
    db.dispose()
    code, out = run("audit", "verify", user="aud")
    assert code == 1 and "3" in out and "TAMPERED" in out


def test_who_acts_token_password_and_user(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """RETROFACE_TOKEN decides who acts; a typed --user must name its owner; a refused
    RETROFACE_PASSWORD says where the password came from (README "Using it")."""
    assert run("init", "--admin", "admin")[0] == 0
    assert run("user", "add", "olive", "--roles", "operator", user="admin")[0] == 0
    code, token = run("user", "token", "--days", "1", user="olive")
    assert code == 0 and token.startswith("rf_")

    monkeypatch.setenv("RETROFACE_TOKEN", token.strip())
    monkeypatch.setenv("RETROFACE_USER", "admin")  # the default password user; the token wins
    code, out = run("user", "list")
    assert code == 2 and "olive" in out and "admin" in out  # refused: olive is no admin
    code, out = run("user", "list", user="admin")
    assert code == 2 and "RETROFACE_TOKEN belongs to olive" in out
    code, out = run("user", "token", "--days", "1", user="olive")
    assert code == 0 and out.startswith("rf_")

    monkeypatch.delenv("RETROFACE_TOKEN")
    monkeypatch.setenv("RETROFACE_PASSWORD", "the admin's password, not olive's")
    code, out = run("user", "token", user="olive")
    assert code == 2 and "invalid username or password" in " ".join(out.split())
    assert "RETROFACE_PASSWORD" in out


def test_audit_verify_against_an_earlier_export(
    run: Run, tmp_path: Path, database_url: str
) -> None:
    """A rewrite that recomputes every hash and deletes the checkpoints: the anchor and an
    earlier export each catch it (more kinds in test_audit_tamper.py)."""
    from retroface.storage.db import Database

    assert run("init", "--admin", "admin")[0] == 0
    assert run("user", "add", "aud", "--roles", "auditor", user="admin")[0] == 0
    export = tmp_path / "kept-export"
    assert run("audit", "export", str(export), user="aud")[0] == 0
    code, out = run("audit", "verify", "--against", str(export), "--json", user="aud")
    assert code == 0 and json.loads(out)["ok"], out
    db = Database(database_url)
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
        conn.execute(text("DELETE FROM audit_records"))
    db.dispose()
    code, out = run("audit", "verify", user="aud")
    # (the command's own login record is seq 1 of the new log: not the seq 1 the anchor holds)
    assert code == 1 and "TAMPERED" in out and "anchor" in out
    (tmp_path / "home" / "anchors" / "audit-anchors.jsonl").unlink()  # the export alone
    code, out = run("audit", "verify", "--against", str(export), "--json", user="aud")
    assert code == 1 and "the earlier export" in json.loads(out)["problem"]
