"""Probe enhancement (issue #13): reproducible steps, an untouched original, an audited derived
version that is searched and disclosed with its chain, refused for outsiders and bad steps, and
deleted with its original. Real LFW faces and the real engine; both stores where a database is
involved (the ``app`` fixture)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests import test_cli
from tests.conftest import ADMIN, enrol_people

from retroface.api.app import create_app
from retroface.context import AppContext
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.media.enhance import (
    apply_steps,
    encode_png,
    parse_steps,
    pixels_sha256,
)
from retroface.media.images import decode_image, load_image
from retroface.search.service import ProbeProvenance
from retroface.storage.crypto import template_aad
from retroface.storage.tables import AuditRecord, Probe, ProbeFace
from retroface.vision.engines import analyse_probe

PASSWORD = "a long test password"
CASE = "CR/13"
PROBE = Path("lfw/Joseph_Biden/Joseph_Biden_0001.jpg")
#: Every operation, each with a non-default parameter where it has one.
ALL_STEPS: list[dict[str, Any]] = [
    {"op": "crop", "box": [40, 30, 210, 220]},
    {"op": "rotate", "angle": -4.5},
    {"op": "brightness", "offset": 12},
    {"op": "contrast", "factor": 1.2},
    {"op": "gamma", "gamma": 1.3},
    {"op": "equalize", "clip_limit": 1.5},
    {"op": "denoise", "strength": 5},
    {"op": "denoise", "method": "bilateral", "strength": 4},
    {"op": "sharpen", "amount": 0.8, "radius": 1.2},
    {"op": "upscale", "factor": 1.5, "interpolation": "lanczos"},
    {"op": "rotate", "angle": 90},
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- pure steps


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda s: f"{s['op']}")
def test_each_step_gives_the_same_bytes_every_time_and_on_any_thread_count(
    data_dir: Path, step: dict[str, Any]
) -> None:
    image = load_image(data_dir / PROBE)
    before = image.copy()
    parsed = parse_steps([step])
    threads = cv2.getNumThreads()
    try:
        outputs = []
        for n in (1, 4, 1):
            cv2.setNumThreads(n)
            outputs.append(encode_png(apply_steps(image, parsed)))
    finally:
        cv2.setNumThreads(threads)
    assert len({sha(o) for o in outputs}) == 1
    assert (image == before).all(), "a step changed its input"
    changed = decode_image(outputs[0])
    assert changed.shape != image.shape or (changed != image).any(), "the step did nothing"


def test_parsed_steps_name_every_parameter() -> None:
    steps = parse_steps([{"op": "upscale", "factor": 2}, {"op": "denoise"}])
    assert [s.to_dict() for s in steps] == [
        {"op": "upscale", "factor": 2.0, "interpolation": "cubic"},
        {"op": "denoise", "method": "nlmeans", "strength": 7.0},
    ]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"op": "gfpgan"}], "unknown operation 'gfpgan'"),
        ([{"op": "upscale", "factor": 20}], "factor must be between 1 and 8"),
        ([{"op": "upscale", "factor": float("nan")}], "factor must be between"),
        ([{"op": "upscale", "factor": True}], "factor must be a number"),
        ([{"op": "upscale"}], "factor is required"),
        ([{"op": "gamma", "gamma": 0}], "gamma must be between 0.2 and 5"),
        ([{"op": "denoise", "method": "median"}], "method must be one of nlmeans, bilateral"),
        ([{"op": "sharpen", "strength": 2}], "unknown parameter(s) strength"),
        ([{"op": "crop", "box": [0, 0, 10]}], "box must be four integers"),
        ([{"op": "crop", "box": [0, 0, 300, 100]}], "is not inside the 250x250 image"),
        ([{"op": "crop", "box": [10, 10, 14, 14]}], "smaller than 8 px"),
        ([{"op": "upscale", "factor": 8}] * 3, "larger than 50,000,000 pixels"),
        ([], "no steps given"),
        ([{"op": "denoise"}] * 21, "at most 20 steps"),
        (["upscale"], "step 1 must be an object"),
        ({"op": "upscale"}, "steps must be a list"),
    ],
)
def test_bad_steps_are_refused_with_a_clear_message(
    data_dir: Path, steps: Any, message: str
) -> None:
    image = load_image(data_dir / PROBE)
    with pytest.raises(InvalidInputError) as err:
        apply_steps(image, parse_steps(steps))
    assert message in str(err.value)


# --------------------------------------------------------------------------- the service


@pytest.fixture
def team(app: AppContext, data_dir: Path) -> dict[str, Any]:
    """olive owns an authorised case with one probe; oscar is an operator outside its team."""
    app.users.ensure_admin("admin", PASSWORD)
    for name, role in (("olive", "operator"), ("oscar", "operator"), ("arthur", "authoriser")):
        app.users.add(ADMIN, name, role, PASSWORD)
    who = {n: app.users.authenticate_password(n, PASSWORD) for n in ("olive", "oscar", "arthur")}
    enrol_people(app, data_dir)
    app.cases.open(who["olive"], CASE, "robbery", "identify the suspect", "CCTV is the only lead")
    app.cases.authorise(who["arthur"], CASE, True, "necessary and proportionate")
    original = (data_dir / PROBE).read_bytes()
    probe = app.searches.add_probe(
        who["olive"], CASE, original, PROBE.name, ProbeProvenance("CCTV", "exhibit AB/1")
    )
    return {**who, "probe": probe, "original": original}


def reapply(app: AppContext, original: bytes, lineage: Any) -> list[tuple[str, str]]:
    """Each version's (file hash, pixel hash), recomputed from the original by its record."""
    image = decode_image(original)
    out = []
    for d in lineage.derivations:
        image = apply_steps(image, parse_steps(d.steps))
        out.append((sha(encode_png(image)), pixels_sha256(image)))
    return out


def test_a_derived_version_is_reproducible_searchable_and_disclosed(
    app: AppContext, team: dict[str, Any]
) -> None:
    olive, probe, original = team["olive"], team["probe"], team["original"]
    first = app.enhancements.enhance(
        olive,
        probe.probe_id,
        [{"op": "crop", "box": [40, 30, 210, 220]}, {"op": "upscale", "factor": 2}],
    )
    second = app.enhancements.enhance(
        olive, first.probe_id, [{"op": "denoise"}, {"op": "sharpen", "amount": 0.5}]
    )
    assert second.parent_id == first.probe_id and first.parent_id == probe.probe_id
    lineage = second.lineage
    assert lineage is not None and lineage.original_sha256 == probe.sha256 == sha(original)
    assert [d.probe_id for d in lineage.derivations] == [first.probe_id, second.probe_id]
    assert lineage.derivations[0].input_sha256 == probe.sha256
    assert lineage.derivations[1].input_sha256 == first.sha256
    assert [s["op"] for d in lineage.derivations for s in d.steps] == [
        "crop",
        "upscale",
        "denoise",
        "sharpen",
    ]
    assert lineage.derivations[1].by == "olive"

    # every version is reproducible from the decrypted original and the record alone
    stored_original = app.blobs.get(probe.sha256)
    assert stored_original == original, "the original's bytes changed"
    expected = [(d.output_sha256, d.output_pixels_sha256) for d in lineage.derivations]
    assert reapply(app, stored_original, lineage) == expected
    assert sha(app.blobs.get(second.sha256)) == second.sha256 == expected[-1][0]

    # the original's record is untouched; the versions are probes of the same case
    with app.db.session() as s:
        row = s.get(Probe, probe.probe_id)
        assert row is not None
        assert (row.content_hash, row.parent_id, row.derivation) == (probe.sha256, None, None)
        assert row.width == 250 and len(probe.faces) == 1
        versions = list(s.scalars(select(Probe).where(Probe.parent_id.is_not(None))))
        assert {v.case_id for v in versions} == {row.case_id}
        assert {v.source for v in versions} == {"CCTV"}
        audited = list(s.scalars(select(AuditRecord).where(AuditRecord.action == "probe.enhance")))
    assert [a.object_id for a in audited] == [str(first.probe_id), str(second.probe_id)]
    assert audited[1].details["input_sha256"] == first.sha256
    assert audited[1].details["output_sha256"] == second.sha256
    assert audited[0].details["steps"] == lineage.derivations[0].steps

    # faces were found on the derived image, so it is searched like any probe
    assert len(second.faces) == 1
    result = app.searches.search(olive, CASE, second.probe_id, None, 5)
    assert result.candidates[0].subject == "joe_biden"
    assert result.probe.probe_id == second.probe_id and result.probe.sha256 == second.sha256
    assert result.probe.lineage == lineage
    plain = app.searches.search(olive, CASE, probe.probe_id, None, 5)
    assert plain.probe.lineage is None

    # a reviewer sees what was done to the probe (the steps), not who did it
    app.users.add(ADMIN, "rita", "reviewer", PASSWORD)
    rita = app.users.authenticate_password("rita", PASSWORD)
    sheet = app.reviews.show(rita, result.search_id)
    assert [st["op"] for st in sheet.probe_enhancement or []] == [
        "crop",
        "upscale",
        "denoise",
        "sharpen",
    ]
    assert app.reviews.show(rita, plain.search_id).probe_enhancement is None

    # the disclosure export shows the chain of the version searched
    export = app.searches.export(olive, result.search_id)
    shown = export.disclosure.probe.lineage
    assert shown is not None and shown.original_sha256 == sha(original)
    assert [d.output_sha256 for d in shown.derivations] == [first.sha256, second.sha256]
    assert app.searches.export(olive, plain.search_id).disclosure.probe.lineage is None


def counts(app: AppContext) -> tuple[int, int, int]:
    with app.db.session() as s:
        probes = s.scalar(select(func.count()).select_from(Probe)) or 0
        faces = s.scalar(select(func.count()).select_from(ProbeFace)) or 0
    return probes, faces, len(list(app.blobs.names()))


@pytest.fixture
def client(app: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(app)) as c:
        yield c


def test_rest_enhancement_outsiders_and_bad_steps(
    app: AppContext, team: dict[str, Any], client: TestClient
) -> None:
    headers = {
        n: {"Authorization": "Bearer " + app.users.issue_token(team[n], n)}
        for n in ("olive", "oscar")
    }
    url = f"/api/v1/probes/{team['probe'].probe_id}/enhancements"
    before = counts(app)
    # an operator outside the case's team: 403, audited as a need-to-know refusal
    r = client.post(url, headers=headers["oscar"], json={"steps": [{"op": "denoise"}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    with pytest.raises(PermissionDeniedError):
        app.enhancements.enhance(team["oscar"], team["probe"].probe_id, [{"op": "denoise"}])
    with app.db.session() as s:
        refused = list(
            s.scalars(select(AuditRecord).where(AuditRecord.action == "probe.enhance.refused"))
        )
    assert [(a.actor, a.details.get("reason")) for a in refused] == [
        ("oscar", "need_to_know"),
        ("oscar", "need_to_know"),
    ]
    # bad steps: a clear 422, nothing stored
    for steps, text in (
        ([{"op": "restore_face"}], "unknown operation"),
        ([{"op": "upscale", "factor": 0.5}], "between 1 and 8"),
        ([{"op": "crop", "box": [100, 100, 400, 400]}], "not inside the 250x250 image"),
    ):
        r = client.post(url, headers=headers["olive"], json={"steps": steps})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", r.text
        assert text in r.json()["error"]["message"]
    r = client.post(
        "/api/v1/probes/999999/enhancements",
        headers=headers["olive"],
        json={"steps": [{"op": "denoise"}]},
    )
    assert r.status_code == 404
    assert counts(app) == before, "a refused enhancement stored something"
    # the owner gets the derived version
    r = client.post(url, headers=headers["olive"], json={"steps": [{"op": "gamma", "gamma": 1.4}]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["parent_id"] == team["probe"].probe_id and len(body["faces"]) == 1
    assert body["lineage"]["derivations"][0]["steps"] == [{"op": "gamma", "gamma": 1.4}]
    assert counts(app) == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_derived_versions_go_with_their_original(
    app: AppContext, team: dict[str, Any], clock: Any
) -> None:
    """Retention deletes a derived version with its original, though it is younger; a case
    purge deletes every version; their files go too."""
    olive, probe = team["olive"], team["probe"]
    clock.advance(days=app.policy.probe_retention.days - 1)
    first = app.enhancements.enhance(olive, probe.probe_id, [{"op": "sharpen"}])
    second = app.enhancements.enhance(olive, first.probe_id, [{"op": "upscale", "factor": 2}])
    search = app.searches.search(olive, CASE, second.probe_id, None, 3)
    assert app.retention.run(ADMIN, dry_run=True).probes_deleted == 0
    clock.advance(days=2)  # the original is due; its versions are a day old
    report = app.retention.run(ADMIN)
    assert sorted(report.probes) == [probe.probe_id, first.probe_id, second.probe_id]
    with app.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Probe)) == 0
        assert s.scalar(select(func.count()).select_from(ProbeFace)) == 0
    for digest in (probe.sha256, first.sha256, second.sha256):
        assert not app.blobs.exists(digest)
    # the search record outlives the probes and still discloses the chain
    shown = app.searches.export(olive, search.search_id).disclosure.probe
    assert shown.probe_id is None and shown.lineage is not None
    assert shown.lineage.original_sha256 == probe.sha256

    # a case purge deletes every version (a new case: the first one's authorisation has ended)
    app.cases.open(olive, "CR/14", "robbery", "identify the suspect", "CCTV is the only lead")
    app.cases.authorise(team["arthur"], "CR/14", True, "necessary and proportionate")
    again = app.searches.add_probe(
        olive, "CR/14", team["original"], "again.jpg", ProbeProvenance("CCTV", "exhibit AB/2")
    )
    v1 = app.enhancements.enhance(olive, again.probe_id, [{"op": "contrast", "factor": 1.3}])
    app.enhancements.enhance(olive, v1.probe_id, [{"op": "brightness", "offset": -10}])
    purged = app.cases.purge("CR/14", "system", "test: purge the case")
    assert (purged.probes, purged.files_deleted) == (3, 3)
    with app.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Probe)) == 0


run = test_cli.run  # the CLI invoked in-process, as a user, on both stores


def test_probe_enhance_on_the_command_line(run: test_cli.Run, data_dir: Path) -> None:
    assert run("init", "--admin", "admin")[0] == 0
    assert run("user", "add", "olive", "--roles", "operator", user="admin")[0] == 0
    assert run("user", "add", "arthur", "--roles", "authoriser", user="admin")[0] == 0
    enrol = ("gallery", "enrol", str(data_dir / "people/joe_biden"), "--inclusion-reason", "x")
    assert run(*enrol, user="admin")[0] == 0
    opened = ("case", "open", "--ref", "C1", "--offence", "robbery", "--purpose", "identify him")
    assert run(*opened, "--justification", "the still is the only lead", user="olive")[0] == 0
    assert run("case", "authorise", "C1", "--approve", "--note", "ok", user="arthur")[0] == 0
    search = ("search", str(data_dir / PROBE), "--case", "C1", "--source", "CCTV")
    code, out = run(*search, "--how-obtained", "exhibit AB/1", "--json", user="olive")
    assert code == 0, out
    probe = json.loads(out)[0]["probe"]  # an array: one entry per image

    code, out = run("probe", "enhance", str(probe["probe_id"]), "--json", user="olive")
    assert code == 2 and "--steps" in out
    code, out = run("probe", "enhance", str(probe["probe_id"]), "--steps", "[{", user="olive")
    assert code == 2 and "not valid JSON" in out
    bad = '[{"op": "upscale", "factor": 99}]'
    code, out = run("probe", "enhance", str(probe["probe_id"]), "--steps", bad, user="olive")
    assert code == 2 and "factor must be between 1 and 8" in out
    steps = '[{"op": "crop", "box": [40, 30, 210, 220]}, {"op": "upscale", "factor": 2}]'
    code, out = run(
        "probe", "enhance", str(probe["probe_id"]), "--steps", steps, "--json", user="olive"
    )
    assert code == 0, out
    first = json.loads(out)
    assert first["lineage"]["original_sha256"] == probe["sha256"]
    code, out = run(
        "probe",
        "enhance",
        str(first["probe_id"]),
        "--step",
        '{"op": "denoise"}',
        "--step",
        '{"op": "sharpen", "amount": 0.5}',
        user="olive",
    )
    assert code == 0 and f"enhanced version of probe {first['probe_id']}" in out, out
    assert "crop(box=[40, 30, 210, 220])" in out and "sharpen(amount=0.5, radius=1.0)" in out
    second = first["probe_id"] + 1
    code, out = run("search", "--probe", str(second), "--case", "C1", user="olive")
    assert code == 0 and "probe version searched" in out and probe["sha256"] in out, out
    code, out = run("probe", "ops", user="olive")
    assert code == 0 and "upscale" in out and "lanczos" in out


def test_a_derived_version_is_embedded_as_any_probe(app: AppContext, team: dict[str, Any]) -> None:
    """Its faces are analysed as every search probe is (``analyse_probe``: test-time flip, a
    second look when nothing is found), so it is read against the operating threshold that was
    calibrated on probes embedded that way, like the original it came from."""
    version = app.enhancements.enhance(
        team["olive"], team["probe"].probe_id, [{"op": "gamma", "gamma": 1.2}]
    )
    with app.db.session() as s:
        stored = s.scalar(select(ProbeFace).where(ProbeFace.probe_id == version.probe_id))
        assert stored is not None
        aad = template_aad(version.sha256, stored.model_key) + b":0"
        embedding = np.frombuffer(app.cipher.decrypt(stored.embedding_enc, aad=aad), np.float32)
    image = decode_image(app.blobs.get(version.sha256))
    expected = analyse_probe(app.engine, image)[0]
    assert np.allclose(embedding, expected.embedding, atol=1e-6)
