"""Several probe images under one case in one call (issue #16), from the CLI and the API.

Each image is its own audited search with its own candidate list; an image that fails (no face,
several faces without a face chosen, not an image, unreadable) gets an error entry in its place
and the others go on; the answer keeps the input order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from tests.conftest import Clock, add_team, enrol_people
from tests.test_api import token_for
from typer.testing import CliRunner

from retroface.api.app import create_app
from retroface.cli.main import app as cli_app
from retroface.cli.session import state
from retroface.config import get_settings
from retroface.context import AppContext
from retroface.core.errors import PermissionDeniedError
from retroface.media.images import load_image
from retroface.search.batch import ProbeFile, search_batch
from retroface.search.service import ProbeProvenance
from retroface.search.views import BatchSearchFailure, BatchSearchResult
from retroface.storage.tables import AuditRecord, Probe, ProbeFace, SearchRecord

PASSWORD = "a long test password"
CASE = {
    "reference": "C1",
    "offence_category": "robbery",
    "purpose": "identify the suspect",
    "justification": "serious offence, the only lead available",
}


def _count(app: AppContext, action: str) -> int:
    with app.db.session() as s:
        return int(s.scalar(select(func.count()).where(AuditRecord.action == action)) or 0)


def _rows(app: AppContext, table: type[Probe] | type[SearchRecord]) -> int:
    with app.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def probes(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Two real LFW faces, a group photo, an image without a face and a file that is no image."""
    folder = tmp_path / "stills"
    folder.mkdir()
    blank = folder / "blank.png"
    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank)
    junk = folder / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    lfw = data_dir / "lfw"
    return {
        "biden": lfw / "Joseph_Biden/Joseph_Biden_0001.jpg",
        "harington": data_dir / "people/kit_harington/johnsnow_test1.jpg",
        "group": data_dir / "people/_multi_face_scenes/obama_and_biden.jpg",
        "blank": blank,
        "junk": junk,
        "folder": folder,
    }


def test_api_batch_of_mixed_probes(
    app: AppContext, data_dir: Path, probes: dict[str, Path]
) -> None:
    enrol_people(app, data_dir)
    op = token_for(app, "olive", "operator")
    auth = token_for(app, "arthur", "authoriser")
    form = {"source": "CCTV", "how_obtained": "exhibit AB/1", "top_k": "3"}
    order = ["biden", "blank", "junk", "group", "harington"]
    files = [("files", (probes[k].name, probes[k].read_bytes(), "image/jpeg")) for k in order]
    with TestClient(create_app(app)) as client:
        assert client.post("/api/v1/cases", headers=op, json=CASE).status_code == 201
        # a case not yet authorised refuses the request as a whole: nothing stored, no entries
        r = client.post("/api/v1/cases/C1/searches", headers=op, data=form, files=files)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert _rows(app, Probe) == 0
        r = client.post(
            "/api/v1/cases/C1/decision", headers=auth, json={"approve": True, "note": "ok"}
        )
        assert r.status_code == 200
        # an authoriser may not search at all (the access matrix)
        r = client.post("/api/v1/cases/C1/searches", headers=auth, data=form, files=files)
        assert r.status_code == 403

        r = client.post("/api/v1/cases/C1/searches", headers=op, data=form, files=files)
        assert r.status_code == 200, r.text
        entries = r.json()
        ok = [e for e in entries if "error" not in e]
        by_search = {e["search_id"]: e for e in ok}
        # stored candidate lists are the ones answered, and they go to review as any search
        for sid, entry in by_search.items():
            stored = client.get(f"/api/v1/searches/{sid}", headers=op).json()
            assert stored["candidates"] == entry["candidates"]
            assert stored["review_status"] == "pending"
    assert [e["input"] for e in entries] == [probes[k].name for k in order]
    biden, blank, junk, group, kit = entries
    # only candidates at or above the operating threshold are listed (#13): the mate
    assert biden["candidates"][0]["subject"] == "joe_biden"
    assert all(c["above_threshold"] for c in biden["candidates"])
    assert kit["candidates"][0]["subject"] == "kit_harington"
    assert biden["label"] == kit["label"] and "lead" in biden["label"]
    assert blank["error"]["code"] == "no_face" and blank["probe_id"]
    assert junk["error"]["code"] == "invalid_image" and junk["probe_id"] is None
    assert "not a recognised image file" in junk["error"]["message"]
    assert group["error"]["code"] == "several_faces" and group["probe_id"]
    assert f"--probe {group['probe_id']}" in group["error"]["message"]
    # one audited search per image searched, one probe per image stored (the junk is not)
    assert len(ok) == 2 and len(by_search) == 2
    assert _count(app, "search.run") == 2 and _rows(app, SearchRecord) == 2
    assert _count(app, "probe.add") == 4 and _rows(app, Probe) == 4


def test_api_batch_face_applies_to_every_image(
    app: AppContext, data_dir: Path, probes: dict[str, Path]
) -> None:
    enrol_people(app, data_dir)
    op = token_for(app, "olive", "operator")
    auth = token_for(app, "arthur", "authoriser")
    form = {"source": "CCTV", "how_obtained": "exhibit AB/1", "face": "1"}
    files = [
        ("files", (p.name, p.read_bytes(), "image/jpeg"))
        for p in (probes["group"], probes["biden"])
    ]
    with TestClient(create_app(app)) as client:
        client.post("/api/v1/cases", headers=op, json=CASE)
        client.post("/api/v1/cases/C1/decision", headers=auth, json={"approve": True, "note": "ok"})
        entries = client.post(
            "/api/v1/cases/C1/searches", headers=op, data=form, files=files
        ).json()
    group, biden = entries
    assert group["candidates"] and "error" not in group  # face 1 of the group photo
    assert (
        biden["error"]["code"] == "invalid_input"
        and "face 1 does not exist" in biden["error"]["message"]
    )
    assert _count(app, "search.run") == 1


@pytest.fixture
def cli(app: AppContext, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppContext]:
    """The CLI acting on ``app`` (same database, data folder and engine), signing in by password."""
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    monkeypatch.delenv("RETROFACE_TOKEN", raising=False)
    get_settings.cache_clear()
    state.__dict__["ctx"] = app
    yield app
    state.__dict__.pop("ctx", None)
    state._principal = None
    state.user = None
    get_settings.cache_clear()


def _search(*args: str) -> tuple[int, str]:
    state._principal = None
    argv = ["--user", "olive", "search", *args, "--case", "C1", "--source", "CCTV"]
    argv += ["--how-obtained", "exhibit AB/1"]
    result = CliRunner().invoke(cli_app, argv, catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_batch_of_mixed_probes(
    cli: AppContext, data_dir: Path, probes: dict[str, Path], tmp_path: Path
) -> None:
    app = cli
    enrol_people(app, data_dir)
    team = add_team(app, {"admin": "admin", "olive": "operator", "arthur": "authoriser"}, PASSWORD)
    app.cases.open(
        team["olive"], "C1", CASE["offence_category"], CASE["purpose"], CASE["justification"]
    )
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    missing = tmp_path / "missing.jpg"

    # one image: an array of one, exit 0
    code, out = _search(str(probes["biden"]), "--top", "3", "--json")
    assert code == 0, out
    (only,) = json.loads(out)
    assert only["input"] == str(probes["biden"]) and only["candidates"][0]["subject"] == "joe_biden"
    assert _count(app, "search.run") == 1

    # files and a folder (expanded: sorted, images only), in the order given
    (probes["folder"] / "notes.txt").write_text("not a probe")
    argv = [str(probes["harington"]), str(missing), str(probes["folder"]), str(probes["group"])]
    code, out = _search(*argv, "--json")
    assert code == 2, out
    entries = json.loads(out)
    inputs = [e["input"] for e in entries]
    folder = probes["folder"]
    assert inputs == [
        str(probes["harington"]),
        str(missing),
        str(folder / "blank.png"),
        str(folder / "junk.jpg"),
        str(probes["group"]),
    ]
    kit, gone, blank, junk, group = entries
    assert kit["candidates"][0]["subject"] == "kit_harington"
    assert gone["error"]["code"] == "unreadable" and "No such file" in gone["error"]["message"]
    assert blank["error"]["code"] == "no_face"
    assert junk["error"]["code"] == "invalid_image"
    assert group["error"]["code"] == "several_faces"
    assert _count(app, "search.run") == 2  # one more: the only face that could be searched

    # without --json: a table per search, one error line per failed image, a summary; exit 2
    code, out = _search(str(probes["biden"]), str(probes["blank"]))
    assert code == 2
    assert "joe_biden" in out and "error:" in out and "no face found" in out
    assert "1 searched, 1 failed" in out
    assert _count(app, "search.run") == 3

    # a folder without images is a mistake in the command, not an empty batch
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _search(str(empty), "--json")
    assert code == 2 and "no image files" in out


def test_a_case_that_lapses_partway_stops_the_batch_once(
    app: AppContext, clock: Clock, data_dir: Path, probes: dict[str, Path]
) -> None:
    """An urgent case whose window ends during the batch: the search done stays in the answer,
    every image left gets the refusal as its entry, and the refusal is audited once."""
    enrol_people(app, data_dir)
    olive = add_team(app, {"admin": "admin", "olive": "operator"}, PASSWORD)["olive"]
    app.cases.open(olive, "U1", *list(CASE.values())[1:], urgent=True)

    def lapse_then_read() -> bytes:
        clock.advance(hours=app.settings.urgent_window_hours + 1)
        return probes["harington"].read_bytes()

    files = [
        ProbeFile("first.jpg", probes["biden"].read_bytes),
        ProbeFile("second.jpg", lapse_then_read),
        ProbeFile("third.jpg", probes["biden"].read_bytes),
    ]
    provenance = ProbeProvenance("CCTV", "exhibit AB/1")
    entries = search_batch(app.searches, olive, "U1", files, provenance)
    first, second, third = entries
    assert isinstance(first, BatchSearchResult) and first.input == "first.jpg"
    assert isinstance(second, BatchSearchFailure) and isinstance(third, BatchSearchFailure)
    assert second.error.code == third.error.code == "forbidden"
    assert second.error.message == third.error.message
    assert _count(app, "probe.add.refused") == 1
    # and a batch refused at its first image is refused as a whole, as one search would be
    with pytest.raises(PermissionDeniedError):
        search_batch(app.searches, olive, "U1", files[2:], provenance)


def test_main_face_searches_a_clear_main_face_and_still_refuses_a_group(
    cli: AppContext, data_dir: Path, probes: dict[str, Path]
) -> None:
    """``--main-face``: an LFW still with a bystander cut off at its edge (SCRFD finds two faces)
    is searched with its centred face; the group photo, where no face is clearly the main one,
    is still refused with its probe id; without the flag both are refused as before."""
    from retroface.gallery.enrol import EnrolItem

    app = cli
    enrol_people(app, data_dir)
    team = add_team(app, {"admin": "admin", "olive": "operator", "arthur": "authoriser"}, PASSWORD)
    warner = data_dir / "lfw/John_Warner"
    app.enroller().run(
        team["admin"], [EnrolItem(path=warner / "John_Warner_0001.jpg", subject="john_warner")]
    )
    app.cases.open(
        team["olive"], "C1", CASE["offence_category"], CASE["purpose"], CASE["justification"]
    )
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    still = warner / "John_Warner_0002.jpg"
    assert len(app.engine.analyse(load_image(still))) == 2  # the test's premise

    code, out = _search(str(still), str(probes["group"]), "--json")
    assert code == 2
    assert [e["error"]["code"] for e in json.loads(out)] == ["several_faces"] * 2
    assert _count(app, "search.run") == 0

    code, out = _search(str(still), str(probes["group"]), "--main-face", "--json")
    assert code == 2
    found, group = json.loads(out)
    assert found["candidates"][0]["subject"] == "john_warner"
    with app.db.session() as s:
        record = s.get(SearchRecord, found["search_id"])
        assert record is not None and record.probe_face_id is not None
        face = s.get(ProbeFace, record.probe_face_id)
        assert face is not None and face.face_index == 0  # the centred face, box x 82..176
    assert group["error"]["code"] == "several_faces" and group["probe_id"]
    assert _count(app, "search.run") == 1


def test_main_face_one_and_a_half_times_as_prominent_is_searched_a_couple_is_not(
    app: AppContext, data_dir: Path
) -> None:
    """The main-face rule (``MAIN_FACE_RATIO`` 1.5, was 2): two LFW stills whose bystander at
    the edge makes the labelled face only 1.6-1.9 times as prominent as the next (refused under
    the old rule) are searched with the labelled face and find that person; a posed couple
    (1.45) is still refused, as a group is; enrolment applies the same rule."""
    from retroface.gallery.enrol import EnrolItem
    from retroface.vision.engines import MAIN_FACE_RATIO, analyse_probe, box_prominence

    lfw = data_dir / "lfw"
    stills = {
        "ethan_hawke": lfw / "Ethan_Hawke/Ethan_Hawke_0003.jpg",
        "alejandro_avila": lfw / "Alejandro_Avila/Alejandro_Avila_0003.jpg",
    }
    couple = data_dir / "people/_multi_face_scenes/kit_with_rose.jpg"

    def ratio(path: Path) -> float:
        image = load_image(path)
        p = sorted(box_prominence(f.box, image.shape) for f in analyse_probe(app.engine, image))
        return p[-1] / p[-2]

    assert MAIN_FACE_RATIO == 1.5
    assert all(1.5 <= ratio(p) < 2.0 for p in stills.values())  # the test's premise
    assert 1.0 <= ratio(couple) < 1.5

    team = add_team(app, {"admin": "admin", "olive": "operator", "arthur": "authoriser"}, PASSWORD)
    enrol_people(app, data_dir)
    refs = [
        EnrolItem(path=lfw / "Ethan_Hawke/Ethan_Hawke_0001.jpg", subject="ethan_hawke"),
        EnrolItem(path=lfw / "Alejandro_Avila/Alejandro_Avila_0001.jpg", subject="alejandro_avila"),
    ]
    assert app.enroller().run(team["admin"], refs).enrolled == 2
    app.cases.open(
        team["olive"], "C1", CASE["offence_category"], CASE["purpose"], CASE["justification"]
    )
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    files = [ProbeFile(str(p), p.read_bytes) for p in (*stills.values(), couple)]
    provenance = ProbeProvenance("CCTV", "exhibit AB/1")

    without = search_batch(app.searches, team["olive"], "C1", files, provenance)
    assert all(isinstance(e, BatchSearchFailure) for e in without)  # no choice made for them

    entries = search_batch(app.searches, team["olive"], "C1", files, provenance, main_face=True)
    *found, refused = entries
    for entry, who in zip(found, stills, strict=True):
        assert isinstance(entry, BatchSearchResult)
        assert entry.candidates[0].subject == who and entry.candidates[0].above_threshold
    assert isinstance(refused, BatchSearchFailure) and refused.error.code == "several_faces"

    # enrolment's default (``multi_face="reject"``) takes the same main faces, refuses the couple
    still_items = [EnrolItem(path=p, subject=f"{who}_still") for who, p in stills.items()]
    summary = app.enroller().run(
        team["admin"], [*still_items, EnrolItem(path=couple, subject="couple")]
    )
    assert summary.enrolled == 2
    assert [Path(r.path).name for r in summary.rejected] == ["kit_with_rose.jpg"]
    assert "none clearly the main one" in summary.rejected[0].reason
