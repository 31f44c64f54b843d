"""The dlib backend on real photos: detection, landmark order, embeddings and identity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from retroface.media.images import load_image
from retroface.vision.dlib_backend import DlibEngine, five_points_from_dlib
from retroface.vision.engines import primary_face
from retroface.vision.types import Face, FaceEngine

pytestmark = pytest.mark.dlib

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
PEOPLE = DATA / "people"

if not PEOPLE.is_dir():
    pytest.skip(f"test data not found at {DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def engine() -> DlibEngine:
    return DlibEngine()


def _primary(engine: DlibEngine, path: Path) -> Face:
    image = load_image(path)
    face = primary_face(engine.analyse(image), image.shape)
    assert face is not None, f"no face found in {path}"
    return face


def _cos(a: Face, b: Face) -> float:
    return float(np.dot(a.embedding, b.embedding))


def test_engine_protocol_and_identity(engine: DlibEngine) -> None:
    assert isinstance(engine, FaceEngine)
    ident = engine.identity
    assert (ident.backend, ident.name, ident.embedding_size) == ("dlib", "dlib_resnet_v1", 128)
    assert "public domain" in ident.licence
    names = {w.name for w in ident.weights}
    assert names == {
        "shape_predictor_5_face_landmarks.dat",
        "dlib_face_recognition_resnet_model_v1.dat",
    }
    for w in ident.weights:
        assert len(w.sha256) == 64 and all(c in "0123456789abcdef" for c in w.sha256)
    assert ident.key.startswith("dlib/dlib_resnet_v1@") and "#" in ident.key


def test_detects_both_faces_in_group_photo(engine: DlibEngine) -> None:
    image = load_image(PEOPLE / "_multi_face_scenes" / "obama_and_biden.jpg")
    faces = engine.analyse(image)
    assert len(faces) >= 2
    # the two subjects are the two largest faces, side by side and clearly detected
    big = sorted(faces, key=lambda f: -f.area)[:2]
    assert all(f.det_score > 0.8 and f.quality.acceptable for f in big)
    left, right = sorted(big, key=lambda f: f.box[0])
    assert left.box[2] <= right.box[0]
    obama = _primary(engine, PEOPLE / "barack_obama" / "obama.jpg")
    biden = _primary(engine, PEOPLE / "joe_biden" / "biden.jpg")
    # Biden stands on the left, Obama on the right: each matches his own portrait
    assert _cos(obama, right) > 0.9 and _cos(obama, right) > _cos(obama, left) + 0.08
    assert _cos(biden, left) > 0.9 and _cos(biden, left) > _cos(biden, right) + 0.08


def test_face_fields(engine: DlibEngine) -> None:
    face = _primary(engine, PEOPLE / "barack_obama" / "obama.jpg")
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert face.crop.shape == (150, 150, 3) and face.crop.dtype == np.uint8
    assert face.landmarks.shape == (5, 2)
    lm = face.landmarks
    # ArcFace order: eye on the image left first; mouth below nose below eyes
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()
    x1, y1, x2, y2 = face.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in lm[:3])
    assert 0.0 < face.det_score <= 1.0
    assert face.model is engine.identity


def test_same_person_scores_clearly_above_different(engine: DlibEngine) -> None:
    obama = [_primary(engine, PEOPLE / "barack_obama" / n) for n in ("obama.jpg", "obama1.jpg")]
    biden = _primary(engine, PEOPLE / "joe_biden" / "biden.jpg")
    same = _cos(obama[0], obama[1])
    different = max(_cos(o, biden) for o in obama)
    # dlib's usual threshold, distance 0.6, is a cosine similarity of 0.82
    assert same > 0.9
    assert different < 0.86
    assert same - different > 0.08


def test_no_face_gives_empty_list(engine: DlibEngine) -> None:
    assert engine.analyse(np.full((240, 320, 3), 127, dtype=np.uint8)) == []


def test_landmark_estimate_for_a_frontal_face() -> None:
    # eye corners level at y=100, eyes 40 px apart, nose bottom centred 31 px below
    raw = np.array([[130, 100], [110, 100], [70, 100], [90, 100], [100, 131]], np.float32)
    lm = five_points_from_dlib(raw)
    np.testing.assert_allclose(lm[0], [80, 100])
    np.testing.assert_allclose(lm[1], [120, 100])
    assert lm[2, 0] == pytest.approx(100, abs=0.01)
    assert lm[3, 0] == pytest.approx(100 - 0.435 * 40, abs=0.01)
    assert lm[3, 1] == pytest.approx(lm[4, 1]) and lm[3, 1] > 131
