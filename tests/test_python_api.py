"""The Python API (docs/python-api.md): its workflow example runs as written, on real faces."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import retroface
from retroface.core.errors import NoFaceError, PermissionDeniedError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _workflow_block() -> str:
    text = DOC.read_text()
    section = text.split("## A whole workflow", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/python-api.md has no python block under 'A whole workflow'"
    return match.group(1)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RETROFACE_") and name != "RETROFACE_TEST_DATA":
            monkeypatch.delenv(name)


def test_documented_workflow_runs(
    data_dir: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _workflow_block().replace('Path("../shared/data")', f"Path({str(data_dir)!r})")
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "investigative lead" in out and "joe_biden" in out


def test_detect_and_compare(data_dir: Path, clean_env: None) -> None:
    faces = retroface.detect_faces(data_dir / "people/_multi_face_scenes/obama_and_biden.jpg")
    assert len(faces) >= 2
    assert all(abs(float(np.linalg.norm(f.embedding)) - 1) < 1e-3 for f in faces)
    people = data_dir / "people"
    same = retroface.compare_faces(people / "joe_biden/biden.jpg", people / "joe_biden/biden2.jpg")
    other = retroface.compare_faces(
        people / "joe_biden/biden.jpg", people / "barack_obama/obama.jpg"
    )
    assert same.same_person and not other.same_person
    assert same.similarity > other.similarity
    assert other.to_dict()["note"].startswith("a similarity score is an investigative lead")


def test_compare_without_a_face(data_dir: Path, clean_env: None, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), "grey").save(blank)
    with pytest.raises(NoFaceError, match="no face found"):
        retroface.compare_faces(blank, data_dir / "people/joe_biden/biden.jpg")


def test_home_checks_roles(clean_env: None, tmp_path: Path) -> None:
    password = "a long passphrase for this test"
    with retroface.open_home(tmp_path / "home") as home:
        admin = home.create_admin("admin", password)
        olive = home.add_user(admin, "olive", "operator", password)
        with pytest.raises(PermissionDeniedError):
            home.add_user(olive, "mallory", "admin", password)
        with pytest.raises(PermissionDeniedError):
            home.enrol(olive, [], inclusion_reason="x")
