"""Face images (issue #12): who may see which face, the privacy blur, the aligned comparison
crops, the REST routes, and that serving a face writes no plaintext to disk.

Real images (a group photo from ``people/_multi_face_scenes`` as the probe, the four enrolled
people as the gallery), real models, SQLite and PostgreSQL (the ``app`` fixture).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from tests.conftest import Clock, add_team, enrol_people

from retroface.api.app import create_app
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import NotFoundError, PermissionDeniedError
from retroface.media.display import (
    ALIGN_PADDING,
    aligned_landmarks,
    blur_all_but,
    expand_box,
    face_crop,
)
from retroface.media.images import decode_image
from retroface.search.service import ProbeProvenance
from retroface.storage.tables import AuditRecord
from retroface.vision.alignment import ARCFACE_TEMPLATE

PASSWORD = "a long test password"
CASE = "CR/12"
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"
ROLES = {
    "admin": "admin",
    "olive": "operator",  # opens the case: its owner
    "oscar": "operator",  # outside the case's team
    "arthur": "authoriser",  # decides the case
    "alice": "authoriser",  # another authoriser, who did not
    "rita": "reviewer",
    "rob": "reviewer",
    "ray": "reviewer",  # never reviews this search
    "aud": "auditor",
}


@dataclass
class World:
    app: AppContext
    who: dict[str, Principal]
    probe_id: int
    boxes: list[list[float]]  # of the probe's faces
    search_id: int  # of face 0, in rita's, rob's and ray's review queues
    original: np.ndarray  # the probe image as decoded from the file


@pytest.fixture
def world(app: AppContext, data_dir: Path) -> World:
    who = add_team(app, ROLES, PASSWORD)
    enrol_people(app, data_dir)
    app.cases.open(who["olive"], CASE, "robbery", "identify the suspect", "the CCTV still is all")
    app.cases.authorise(who["arthur"], CASE, True, "necessary and proportionate")
    data = (data_dir / SCENE).read_bytes()
    probe = app.searches.add_probe(
        who["olive"], CASE, data, "scene.jpg", ProbeProvenance("CCTV", "exhibit AB/1, from DVR")
    )
    assert len(probe.faces) >= 2, "the scene must show a bystander"
    search = app.searches.search(who["olive"], CASE, probe.probe_id, 0, top_k=3)
    assert search.candidates[0].subject == "joe_biden"
    return World(
        app,
        who,
        probe.probe_id,
        [f.box for f in probe.faces],
        search.search_id,
        decode_image(data),
    )


def jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return np.asarray(img.convert("RGB"))


def audit_rows(app: AppContext, actor: str, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        rows = list(
            s.scalars(
                select(AuditRecord)
                .where(AuditRecord.actor == actor, AuditRecord.action == action)
                .order_by(AuditRecord.seq)
            )
        )
        s.expunge_all()
        return rows


def region_error(a: np.ndarray, b: np.ndarray, box: list[float], margin: float = 0.0) -> float:
    """Mean absolute difference of two images of one size inside ``box``."""
    x1, y1, x2, y2 = expand_box((box[0], box[1], box[2], box[3]), margin, a.shape)
    return float(np.abs(a[y1:y2, x1:x2].astype(float) - b[y1:y2, x1:x2].astype(float)).mean())


def test_who_sees_which_face_and_every_view_is_audited(world: World) -> None:
    app, who, faces = world.app, world.who, world.app.faces
    pid, sid = world.probe_id, world.search_id

    # the owner sees the face: a crop around it, with margin, audited
    crop = jpeg(faces.probe_face(who["olive"], pid, 0).jpeg)
    x1, y1, x2, y2 = world.boxes[0]
    assert crop.shape[0] == crop.shape[1] >= max(x2 - x1, y2 - y1)
    seen = audit_rows(app, "olive", "face.view")
    assert [(r.object_type, r.object_id, r.case_ref) for r in seen] == [("probe", str(pid), CASE)]
    assert seen[0].details["face"] == 0 and seen[0].details["view"] == "face"

    # an operator outside the case's team: 403, and the refusal is audited with the face asked
    with pytest.raises(PermissionDeniedError, match="no need to know"):
        faces.probe_face(who["oscar"], pid, 1)
    with pytest.raises(PermissionDeniedError):
        faces.candidate_face(who["oscar"], sid, 1)
    refused = audit_rows(app, "oscar", "face.view.refused")
    assert [(r.object_type, r.details["reason"]) for r in refused] == [
        ("probe", "need_to_know"),
        ("search", "need_to_know"),
    ]
    assert refused[0].details["face"] == 1 and refused[1].details["rank"] == 1
    assert audit_rows(app, "oscar", "face.view") == []

    # the authoriser who decided the case and the auditor see the probe; another authoriser not
    assert faces.probe_image(who["arthur"], pid).blurred == len(world.boxes)
    assert jpeg(faces.probe_face(who["aud"], pid, 1).jpeg).size
    with pytest.raises(PermissionDeniedError):
        faces.probe_face(who["alice"], pid, 0)

    # a reviewer sees the candidates of a search in their queue, never a probe by its id
    cand = faces.candidate_face(who["rita"], sid, 1)
    assert jpeg(cand.jpeg).shape[2] == 3
    view = audit_rows(app, "rita", "face.view")[-1]
    assert (view.object_type, view.object_id) == ("search", str(sid))
    assert view.details["rank"] == 1 and view.details["subject"] == "joe_biden"
    with pytest.raises(PermissionDeniedError):
        faces.probe_face(who["rita"], pid, 0)
    with pytest.raises(NotFoundError):
        faces.candidate_face(who["rita"], sid, 99)

    # side by side: both aligned in one frame, at one scale, with their landmarks
    probe = faces.probe_aligned(who["rita"], sid, size=224)
    ref = faces.candidate_aligned(who["rita"], sid, 1, size=224)
    assert jpeg(probe.jpeg).shape == jpeg(ref.jpeg).shape == (224, 224, 3)
    assert probe.landmarks is not None and ref.landmarks is not None
    p, r = np.array(probe.landmarks), np.array(ref.landmarks)
    assert p.shape == r.shape == (5, 2)
    # the eyes land where the template puts them (within a few pixels: a least-squares fit)
    assert np.abs(p[:2] - r[:2]).max() < 224 * 0.06
    assert p[1, 0] - p[0, 0] == pytest.approx(r[1, 0] - r[0, 0], rel=0.15)
    marks = faces.comparison_landmarks(who["rita"], sid, 1, size=224)
    assert marks.probe == probe.landmarks and marks.candidate == ref.landmarks
    assert "similarity" not in marks.model_dump() and "decision" not in str(marks.model_dump())

    # once the search is settled it leaves the queues: a reviewer who did not review it is
    # refused; one who did still sees it
    app.reviews.decide(who["rita"], sid, "possible match", "same features", candidate_rank=1)
    app.reviews.decide(who["rob"], sid, "possible match", "agree", candidate_rank=1)
    with pytest.raises(PermissionDeniedError):
        faces.candidate_aligned(who["ray"], sid, 1)
    assert faces.candidate_aligned(who["rob"], sid, 1).landmarks is not None

    # an admin sees gallery reference faces (erasure work), never a case's probe
    image_id = world.app.searches.get_search(who["olive"], sid).candidates[0].image_id
    assert image_id is not None
    assert jpeg(faces.reference_face(who["admin"], image_id).jpeg).size
    with pytest.raises(PermissionDeniedError):
        faces.probe_face(who["admin"], pid, 0)
    with pytest.raises(PermissionDeniedError):
        faces.reference_face(who["olive"], image_id)
    admin_refusals = audit_rows(app, "admin", "face.view.refused")
    assert admin_refusals and admin_refusals[0].details["reason"] == "forbidden"


def test_privacy_mode_blurs_bystanders_until_a_face_is_picked(world: World) -> None:
    app, olive, pid = world.app, world.who["olive"], world.probe_id
    kept, bystander = world.boxes[0], world.boxes[1]

    # face 0 picked: the bystander's face is unrecognisable, the picked one untouched (up to
    # JPEG's own noise, a few levels)
    shown = app.faces.probe_image(olive, pid, keep=0, max_side=4096)
    picked = jpeg(shown.jpeg)
    assert picked.shape == world.original.shape
    assert shown.blurred == len(world.boxes) - 1
    noise = region_error(picked, world.original, kept)
    assert noise < 4.0
    assert region_error(picked, world.original, bystander) > 4 * noise + 8

    # nothing picked: every face blurred
    none = jpeg(app.faces.probe_image(olive, pid, max_side=4096).jpeg)
    for box in world.boxes:
        assert region_error(none, world.original, box) > 4 * noise + 8

    # a face crop blurs a neighbour in its margin; blur-all blurs the face itself too
    assert app.faces.probe_face(olive, pid, 0).blurred == len(world.boxes) - 1
    plain = jpeg(app.faces.probe_face(olive, pid, 0).jpeg).astype(float)
    hidden = jpeg(app.faces.probe_face(olive, pid, 0, blur_all=True).jpeg).astype(float)
    assert plain.shape == hidden.shape
    h, w = plain.shape[:2]
    centre = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))
    assert np.abs(plain[centre] - hidden[centre]).mean() > 8
    # ... and the views say what was blurred
    last = audit_rows(app, "olive", "face.view")[-1]
    assert last.details["blur_all"] is True and last.details["blurred"] == len(world.boxes)

    # the admin setting blurs everything, whatever a request asks
    app.faces.blur_all = True
    forced = jpeg(app.faces.probe_image(olive, pid, keep=0, max_side=4096).jpeg)
    assert region_error(forced, world.original, kept) > 4 * noise + 8


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its first bytes (SQLite's journal files aside: they come
    and go with each transaction)."""
    found = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal")):
            with p.open("rb") as f:
                found[str(p.relative_to(root))] = f.read(4)
    return found


@pytest.fixture
def client(app: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(app)) as c:
        yield c


def bearer(app: AppContext, who: Principal) -> dict[str, str]:
    return {"Authorization": "Bearer " + app.users.issue_token(who, who.username)}


def test_rest_routes_serve_jpeg_without_writing_plaintext(world: World, client: TestClient) -> None:
    app, who = world.app, world.who
    pid, sid = world.probe_id, world.search_id
    olive, oscar, rita, admin = (bearer(app, who[n]) for n in ("olive", "oscar", "rita", "admin"))
    before = files_under(app.home)
    api = "/api/v1"
    routes: list[tuple[dict[str, str], str]] = [
        (olive, f"{api}/probes/{pid}/faces/0.jpg"),
        (olive, f"{api}/probes/{pid}/image.jpg?keep=0"),
        (olive, f"{api}/probes/{pid}/image.jpg?blur_all=true&max_side=800"),
        (olive, f"{api}/searches/{sid}/probe/face.jpg"),
        (rita, f"{api}/searches/{sid}/probe/aligned.jpg?size=256"),
        (rita, f"{api}/searches/{sid}/candidates/1/face.jpg"),
        (rita, f"{api}/searches/{sid}/candidates/1/aligned.jpg"),
    ]
    for headers, url in routes:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, (url, r.text)
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        assert jpeg(r.content).size
    r = client.get(f"{api}/probes/{pid}/image.jpg?max_side=500", headers=olive)
    scale = float(r.headers["x-image-scale"])
    assert jpeg(r.content).shape[1] == round(world.original.shape[1] * scale) == 500
    r = client.get(f"{api}/searches/{sid}/candidates/1/landmarks", headers=rita)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    assert body["size"] == 256 and len(body["probe"]) == len(body["candidate"]) == 5
    image_id = app.searches.get_search(who["olive"], sid).candidates[0].image_id
    r = client.get(f"{api}/gallery/images/{image_id}/face.jpg", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"

    # without the right: 403 with the documented error, audited; a missing face: 404
    r = client.get(f"{api}/probes/{pid}/faces/0.jpg", headers=oscar)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert audit_rows(app, "oscar", "face.view.refused")
    r = client.get(f"{api}/probes/{pid}/faces/0.jpg", headers=rita)  # at the access gate
    assert r.status_code == 403
    r = client.get(f"{api}/probes/{pid}/faces/{len(world.boxes)}.jpg", headers=olive)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    # no plaintext anywhere under the data directory: no new file, none that is a JPEG
    after = files_under(app.home)
    assert set(after) == set(before)
    assert not [name for name, head in after.items() if head.startswith(b"\xff\xd8\xff")]


# ----------------------------------------------------------------------------- image operations


def test_blur_all_but_hides_everything_except_the_kept_face() -> None:
    """A video frame records only its track's face: everything else is blurred."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    kept = (100.0, 50.0, 160.0, 120.0)
    out = blur_all_but(image, kept, margin=0.0)
    assert np.array_equal(out[50:120, 100:160], image[50:120, 100:160])
    outside = np.abs(out.astype(float) - image.astype(float))
    outside[50:120, 100:160] = np.nan
    assert np.nanmean(outside) > 40  # random noise averaged away: nothing of it is left
    assert np.abs(blur_all_but(image, None).astype(float) - image.astype(float)).mean() > 40


def test_face_crop_is_square_and_padded_past_the_edge() -> None:
    image = np.full((100, 100, 3), 255, dtype=np.uint8)
    crop = face_crop(image, (0.0, 0.0, 40.0, 40.0), margin=0.5)
    assert crop.shape == (80, 80, 3)
    assert (crop[:15, :15] == 128).all() and (crop[-15:, -15:] == 255).all()
    assert face_crop(np.zeros((4000, 4000, 3), np.uint8), (0, 0, 3000, 3000)).shape[0] == 512


def test_aligned_landmarks_put_a_template_face_on_the_template() -> None:
    """Landmarks already on the ArcFace template (at any scale, rotation and place) land on the
    display template: one frame for every face, whatever its size in the source image."""
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = (ARCFACE_TEMPLATE * 3.1) @ rot.T + [400.0, 250.0]
    moved = np.array(aligned_landmarks(source, 224))
    expected = (ARCFACE_TEMPLATE + 112 * ALIGN_PADDING) * (224 / (112 * (1 + 2 * ALIGN_PADDING)))
    assert np.abs(moved - expected).max() < 0.05


def test_a_lapsed_urgent_case_shows_no_face(app: AppContext, data_dir: Path, clock: Clock) -> None:
    """An urgent case never authorised is purged before any of its faces is shown."""
    who = add_team(app, {"admin": "admin", "olive": "operator"}, PASSWORD)
    app.cases.open(
        who["olive"],
        "U/1",
        "robbery",
        "identify the suspect",
        "urgent: the suspect is still at large",
        True,
    )
    data = (data_dir / "lfw/Joseph_Biden/Joseph_Biden_0001.jpg").read_bytes()
    probe = app.searches.add_probe(
        who["olive"], "U/1", data, "p.jpg", ProbeProvenance("CCTV", "exhibit U/1, from DVR")
    )
    assert jpeg(app.faces.probe_face(who["olive"], probe.probe_id, 0).jpeg).size
    clock.advance(hours=49)  # the urgent window (48 h) ended without an authorisation
    with pytest.raises(NotFoundError):
        app.faces.probe_face(who["olive"], probe.probe_id, 0)
    assert not app.blobs.exists(probe.sha256)
