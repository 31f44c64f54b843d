"""The operating threshold shipped with the model, investigation mode, and what reviewers see
(issue #13): a face that is not in the gallery returns "no candidate above the operating
threshold" by default and goes to no review queue; only a case authorised for investigation mode
lists candidates below it; an operator cannot lower the bar without that authorisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from tests.conftest import ADMIN, add_team, enrol_people

from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import ConflictError, InvalidInputError, PermissionDeniedError
from retroface.core.status import ReviewStatus
from retroface.governance.thresholds import (
    operating_threshold,
    shipped_threshold,
    shipped_thresholds,
)
from retroface.search.service import NONE_ABOVE, ProbeProvenance
from retroface.storage.tables import AuditRecord, SearchRecord

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"


@pytest.fixture
def team(app: AppContext, data_dir: Path) -> dict[str, Principal]:
    users = {
        "admin": "admin",
        "olive": "operator",
        "arthur": "authoriser",
        "rita": "reviewer",
        "aud": "auditor",
    }
    team = add_team(app, users, PASSWORD)
    enrol_people(app, data_dir)
    return team


def _case(
    app: AppContext, team: dict[str, Principal], ref: str, investigation: bool = False
) -> None:
    app.cases.open(
        team["olive"],
        ref,
        "robbery",
        "identify the robbery suspect",
        "serious violent offence; the CCTV still is the only lead",
    )
    app.cases.authorise(
        team["arthur"], ref, True, "necessary and proportionate", investigation_mode=investigation
    )


def _scene(app: AppContext, who: Principal, ref: str, data_dir: Path) -> int:
    return app.searches.add_probe(
        who, ref, (data_dir / SCENE).read_bytes(), "scene.jpg", PROV
    ).probe_id


#: Faces of the scene, in the engine's order: Biden, Obama, and a child who is nobody enrolled
#: (best similarity to the people of ``people/`` 0.08; Obama's mate scores 0.67-0.74).
BIDEN, OBAMA, CHILD = 0, 1, 2


def _op(app: AppContext) -> float:
    op = shipped_threshold(app.engine.identity.key)
    assert op is not None, "the default model ships no operating threshold"
    return op.value


def _queue(app: AppContext, who: Principal) -> list[int]:
    return [q.search_id for q in app.reviews.queue(who)]


def test_the_default_model_ships_a_calibrated_threshold(engine: object) -> None:
    from retroface.vision.types import FaceEngine

    assert isinstance(engine, FaceEngine)
    rec = shipped_thresholds()[engine.identity.key]
    assert rec["target_fpir"] == 0.01 and rec["achieved_fpir"] <= 0.01
    assert 0.2 < rec["threshold"] < 0.6
    assert rec["command"].startswith("retroface eval calibrate ")
    assert len(rec["dataset_hash"]) == 64 and rec["n_mated"] > 1000 and rec["n_nonmated"] > 1000
    assert rec["date"] and rec["pipeline"] == {"det_size": 640, "flip": False}
    points = rec["evaluation"]["points"]
    assert points["0.01"]["threshold"] == rec["threshold"]
    assert points["0.001"]["threshold"] > rec["threshold"]  # the sample allows FPIR 0.1%
    sex = rec["evaluation"]["demographics"]["sex"]["result"]
    assert {"female", "male"} <= set(sex["groups"]) and sex["threshold"] == rec["threshold"]


def test_a_stranger_gets_no_candidate_above_the_threshold_and_no_review(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    olive, rita = team["olive"], team["rita"]
    _case(app, team, "C1")
    op = _op(app)
    probe = _scene(app, olive, "C1", data_dir)
    stranger = app.searches.search(olive, "C1", probe, face_index=CHILD)
    assert stranger.candidates == []
    assert stranger.none_above_threshold and stranger.message == NONE_ABOVE
    assert stranger.review_status == ReviewStatus.NO_CANDIDATES
    assert (stranger.mode, stranger.threshold, stranger.threshold_source) == (
        "operating",
        op,
        "shipped",
    )
    assert (stranger.operating_threshold, stranger.operating_source) == (op, "shipped")
    # the mate in the same scene is still found, above the threshold, and goes to review
    mate = app.searches.search(olive, "C1", probe, face_index=OBAMA)
    assert mate.candidates[0].subject == "barack_obama"
    assert all(c.above_threshold for c in mate.candidates)
    assert not mate.none_above_threshold and mate.message is None
    assert _queue(app, rita) == [mate.search_id]  # the stranger's search is in no queue
    with pytest.raises(ConflictError, match="no candidate above the operating threshold"):
        app.reviews.decide(rita, stranger.search_id, "no match", "nothing there")
    with app.db.session() as s:
        details = s.scalars(
            select(AuditRecord.details).where(AuditRecord.action == "search.run")
        ).all()
    assert details[0]["mode"] == "operating" and details[0]["threshold_source"] == "shipped"
    assert details[0]["operating_threshold"] == op and details[0]["candidates"] == []
    assert details[1]["above_operating_threshold"] == len(mate.candidates)


def test_investigation_mode_lists_the_top_k_and_is_recorded(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    olive, rita = team["olive"], team["rita"]
    with pytest.raises(InvalidInputError, match="approval"):
        app.cases.authorise(team["arthur"], "NOPE", False, "no", investigation_mode=True)
    _case(app, team, "C2", investigation=True)
    assert app.cases.show(olive, "C2").investigation_mode is True
    op = _op(app)
    probe = _scene(app, olive, "C2", data_dir)
    result = app.searches.search(olive, "C2", probe, face_index=CHILD)
    assert [c.rank for c in result.candidates] == [1, 2, 3, 4]  # the whole gallery of four
    assert all(c.above_threshold is False and c.similarity < op for c in result.candidates)
    assert result.none_above_threshold and result.message == NONE_ABOVE
    assert (result.mode, result.threshold, result.threshold_source) == ("investigation", None, None)
    assert result.operating_threshold == op
    # listed leads below the threshold are reviewed like any other: the sheet says where it lies
    assert result.review_status == ReviewStatus.PENDING
    assert _queue(app, rita) == [result.search_id]
    sheet = app.reviews.show(rita, result.search_id)
    assert (sheet.mode, sheet.operating_threshold, sheet.operating_source) == (
        "investigation",
        op,
        "shipped",
    )
    assert [c.above_threshold for c in sheet.candidates] == [False] * 4
    with app.db.session() as s:
        row = s.get(SearchRecord, result.search_id)
        assert row is not None and row.mode == "investigation"
        approve = s.scalars(
            select(AuditRecord.details).where(AuditRecord.action == "case.approve")
        ).one()
        run = s.scalars(select(AuditRecord.details).where(AuditRecord.action == "search.run")).one()
    assert approve["investigation_mode"] is True
    assert run["mode"] == "investigation" and run["threshold"] is None
    assert run["above_operating_threshold"] == 0 and len(run["candidates"]) == 4


def test_an_operator_cannot_lower_the_threshold_without_investigation_mode(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    olive = team["olive"]
    op = _op(app)
    _case(app, team, "C1")
    probe = _scene(app, olive, "C1", data_dir)
    with pytest.raises(PermissionDeniedError, match="below the operating threshold"):
        app.searches.search(olive, "C1", probe, face_index=CHILD, threshold=0.05)
    with app.db.session() as s:
        refused = s.scalars(
            select(AuditRecord.details).where(AuditRecord.action == "search.run.refused")
        ).one()
        assert s.scalar(select(SearchRecord.id)) is None  # refused before anything was stored
    assert refused["threshold"] == 0.05
    # a stricter threshold is the operator's to choose, recorded as explicit
    strict = app.searches.search(olive, "C1", probe, face_index=OBAMA, threshold=op + 0.05)
    assert strict.threshold_source == "explicit" and strict.threshold == op + 0.05
    assert strict.candidates[0].subject == "barack_obama"
    # under an investigation-mode authorisation the same lower threshold is allowed
    _case(app, team, "C2", investigation=True)
    probe2 = _scene(app, olive, "C2", data_dir)
    low = app.searches.search(olive, "C2", probe2, face_index=CHILD, threshold=0.05)
    assert low.threshold_source == "explicit" and low.mode == "investigation"
    assert all(0.05 <= c.similarity < op for c in low.candidates)


def test_a_recorded_calibration_overrides_the_shipped_threshold(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    from retroface.eval.runner import Calibration

    key = app.engine.identity.key
    cal = Calibration(key, 0.9, 0.01, 0.008, 0.4, 100, 500, "0" * 64, "force photographs")
    record_id = app.thresholds.record(ADMIN, cal, evaluation={"points": {}})
    with app.db.session() as s:
        op = operating_threshold(s, key)
    assert op is not None and (op.value, op.source, op.record_id) == (0.9, "calibrated", record_id)
    _case(app, team, "C1")
    probe = _scene(app, team["olive"], "C1", data_dir)
    result = app.searches.search(team["olive"], "C1", probe, face_index=OBAMA)
    assert result.candidates == [] and result.none_above_threshold  # 0.74 < 0.9
    assert (result.threshold, result.threshold_source) == (0.9, "calibrated")
    assert result.threshold_record_id == record_id


def test_investigation_mode_and_threshold_over_the_api(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    """The authoriser's flag travels through ``POST /cases/{ref}/decision``; a search answers
    with where the threshold lies, and a lower threshold without the flag is 403."""
    from fastapi.testclient import TestClient

    from retroface.api.app import create_app

    op = _op(app)
    app.cases.open(
        team["olive"], "A1", "robbery", "identify the suspect", "serious; CCTV is the only lead"
    )
    with TestClient(create_app(app)) as client:

        def login(name: str) -> dict[str, str]:
            r = client.post("/api/v1/auth/token", json={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            return {"Authorization": "Bearer " + r.json()["access_token"]}

        olive, arthur = login("olive"), login("arthur")
        r = client.post(
            "/api/v1/cases/A1/decision",
            headers=arthur,
            json={"approve": True, "note": "proportionate", "investigation_mode": False},
        )
        assert r.status_code == 200 and r.json()["investigation_mode"] is False, r.text
        probe = _scene(app, team["olive"], "A1", data_dir)
        body = {"case": "A1", "probe_id": probe, "face": CHILD, "top_k": 20}
        r = client.post("/api/v1/searches", headers=olive, json=body)
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["candidates"] == [] and d["none_above_threshold"] is True
        assert d["message"] == NONE_ABOVE and d["operating_threshold"] == op
        r = client.post("/api/v1/searches", headers=olive, json=body | {"threshold": 0.05})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
