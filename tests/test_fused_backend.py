"""The opt-in ``fused`` backend (ArcFace + EdgeFace-S) on real faces, real weights, real stores.

Its template is ``[a / sqrt(2), e / sqrt(2)]``; these tests check on real photos that it is of
unit length and that its cosine with another fused template is the mean of the two models'
cosines (each model run here on its own, with onnxruntime directly for EdgeFace), that probes
get test-time flip in both halves, and that the backend is chosen by ``RETROFACE_BACKEND``,
enrols and searches end to end, and that ``retroface models`` states its licence.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import retroface
from retroface.media.images import load_image
from retroface.vision.engines import (
    BACKENDS,
    ArcFaceEngine,
    FusedEngine,
    analyse_probe,
    build_engine,
    primary_face,
)
from retroface.vision.types import Face, FaceEngine, ImageArray
from retroface.vision.weights import EDGEFACE_SHA256, ModelUnavailableError, edgeface_weights

try:
    EDGE = edgeface_weights()
except ModelUnavailableError as exc:  # the `fused` extra of scripts/setup.sh is not installed
    pytest.skip(str(exc), allow_module_level=True)


REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
PEOPLE = DATA / "people"
PASSWORD = "a long passphrase for this test"

if not PEOPLE.is_dir():
    pytest.skip(f"test data not found at {DATA}", allow_module_level=True)

#: Two photos each of three people, and a third person's face for the negative pairs.
PHOTOS = [
    PEOPLE / "joe_biden/biden.jpg",
    PEOPLE / "joe_biden/biden2.jpg",
    PEOPLE / "barack_obama/obama.jpg",
    PEOPLE / "barack_obama/obama1.jpg",
    PEOPLE / "rose_leslie/img1.jpg",
    PEOPLE / "rose_leslie/img2.jpg",
]


@pytest.fixture(scope="module")
def fused() -> FusedEngine:
    engine = build_engine(backend="fused", threads=2, flip=False)
    assert isinstance(engine, FusedEngine)
    return engine


@pytest.fixture(scope="module")
def edge_session() -> ort.InferenceSession:
    return ort.InferenceSession(EDGE.path, providers=["CPUExecutionProvider"])


def _edge(session: ort.InferenceSession, crop: ImageArray, flip: bool = False) -> np.ndarray:
    """EdgeFace-S's unit embedding of an aligned RGB crop, computed here without the product's
    recogniser class: NCHW, (x - 127.5) / 127.5, one crop a run (the export's only batch)."""

    def run(c: ImageArray) -> np.ndarray:
        x = ((c.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: np.ascontiguousarray(x)})[0][0], np.float64)

    v = run(crop) + (run(np.ascontiguousarray(crop[:, ::-1])) if flip else 0.0)
    return v / np.linalg.norm(v)


def _primary(engine: FaceEngine, path: Path, probe: bool = False) -> Face:
    image = load_image(path)
    faces = analyse_probe(engine, image) if probe else engine.analyse(image)
    face = primary_face(faces, image.shape)
    assert face is not None, f"no face in {path}"
    return face


def test_identity_states_all_weights_and_the_licence(fused: FusedEngine) -> None:
    ident = fused.identity
    assert "fused" in BACKENDS
    assert ident.backend == "fused" and ident.embedding_size == 1024
    assert ident.name == "scrfd_500m+w600k_mbf+edgeface_s_gamma_05"
    assert [w.name for w in ident.weights] == [
        "scrfd_500m_bnkps.onnx",
        "w600k_mbf.onnx",
        "edgeface_s_gamma_05.onnx",
    ]
    assert ident.weights[2].sha256 == EDGEFACE_SHA256
    # its own model key: fused templates never mix with arcface ones
    assert ident.key.startswith("fused/") and ident.key.count("+") >= 4
    assert ident.key != ArcFaceEngine().identity.key
    assert "CC-BY-NC-SA-4.0" in ident.licence and "non-commercial research" in ident.licence


def test_template_is_unit_and_its_cosine_is_the_mean_of_the_two_models(
    fused: FusedEngine, engine: FaceEngine, edge_session: ort.InferenceSession
) -> None:
    faces = [_primary(fused, p) for p in PHOTOS]
    arcs = [_primary(engine, p) for p in PHOTOS]  # the default engine, on its own
    for f, a in zip(faces, arcs, strict=True):
        assert f.embedding.shape == (1024,)
        assert abs(float(np.linalg.norm(f.embedding)) - 1.0) < 1e-5
        assert f.box == a.box  # same detection, so the same aligned crop
        np.testing.assert_array_equal(f.crop, a.crop)
    edges = [_edge(edge_session, f.crop) for f in faces]
    n = len(PHOTOS)
    same, different = [], []
    for i in range(n):
        for j in range(i + 1, n):
            fused_cos = float(np.dot(faces[i].embedding, faces[j].embedding))
            arc_cos = float(np.dot(arcs[i].embedding, arcs[j].embedding))
            edge_cos = float(np.dot(edges[i], edges[j]))
            assert fused_cos == pytest.approx((arc_cos + edge_cos) / 2, abs=1e-4)
            (same if i // 2 == j // 2 else different).append(fused_cos)
    # and the mean still tells people apart on these photos
    assert min(same) > max(different) + 0.2


def test_probe_flip_applies_to_both_models(
    fused: FusedEngine, edge_session: ort.InferenceSession
) -> None:
    path = PHOTOS[0]
    stored = _primary(fused, path)
    probe = _primary(fused, path, probe=True)
    assert abs(float(np.linalg.norm(probe.embedding)) - 1.0) < 1e-5
    assert not np.allclose(probe.embedding, stored.embedding)
    half = probe.embedding[512:] * np.sqrt(2.0)
    np.testing.assert_allclose(half, _edge(edge_session, probe.crop, flip=True), atol=1e-4)
    arc_flip = fused.recogniser.embed([probe.crop], flip=True)[0]
    np.testing.assert_allclose(probe.embedding[:512] * np.sqrt(2.0), arc_flip, atol=1e-5)
    # the quality verdict works for it: the fused model's own shipped quality model applies
    assert probe.quality.hit_chance is not None and probe.quality.verdict in {"good", "fair"}
    assert fused.hit_model is not None and fused.hit_model.backend == "fused"
    # the quality measures are the arcface engine's (same crop, ArcFace's raw length)
    assert probe.quality.embedding_norm == pytest.approx(
        float(np.linalg.norm(fused.recogniser.embed_raw([probe.crop])[0][0])), rel=1e-5
    )


def test_backend_is_selected_by_setting_and_enrols_and_searches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("RETROFACE_") and name != "RETROFACE_TEST_DATA":
            monkeypatch.delenv(name)
    monkeypatch.setenv("RETROFACE_BACKEND", "fused")
    monkeypatch.setenv("RETROFACE_THREADS", "2")
    with retroface.open_home(tempfile.mkdtemp(prefix="fused-home-")) as home:
        assert home.ctx.engine.identity.backend == "fused"
        admin = home.create_admin("admin", PASSWORD)
        home.add_user(admin, "olive", "operator", PASSWORD)
        home.add_user(admin, "arthur", "authoriser", PASSWORD)
        summary = home.enrol(
            admin,
            [PEOPLE / "joe_biden", PEOPLE / "barack_obama", PEOPLE / "rose_leslie"],
            inclusion_reason="custody image",
            source="test",
        )
        assert summary.enrolled >= 6
        olive, arthur = home.sign_in("olive", PASSWORD), home.sign_in("arthur", PASSWORD)
        home.open_case(
            olive,
            "FU/1",
            offence="robbery",
            purpose="identify the suspect",
            justification="serious offence; the still is the only lead",
        )
        home.authorise(arthur, "FU/1", note="necessary and proportionate")
        result = home.search(
            olive,
            DATA / "lfw/Joseph_Biden/Joseph_Biden_0001.jpg",
            case="FU/1",
            source="CCTV",
            how_obtained="exported from the DVR",
        )
        top = result.candidates[0]
        assert top.subject == "joe_biden" and top.above_threshold
        # the fused model's own shipped operating threshold is in force, not arcface's
        assert result.threshold_source == "shipped"
        assert result.operating_threshold is not None and 0.0 < result.operating_threshold < 1
        # a face that is not in the gallery: nothing reaches the fused threshold
        stranger = home.search(
            olive,
            PEOPLE / "kit_harington/john1.jpeg",
            case="FU/1",
            source="CCTV",
            how_obtained="exported from the DVR",
        )
        assert stranger.none_above_threshold


def test_models_command_states_the_fused_licence() -> None:
    from typer.testing import CliRunner

    from retroface.cli.main import app

    out = CliRunner().invoke(app, ["models", "--json"])
    assert out.exit_code == 0, out.output
    rows = {b["backend"]: b for b in json.loads(out.output)["backends"]}
    row = rows["fused"]
    assert row["available"] and not row["default"] and row["embedding_size"] == 1024
    assert "CC-BY-NC-SA-4.0" in row["licence"] and "non-commercial" in row["licence"]
    assert [w["sha256"] for w in row["weights"]][2] == EDGEFACE_SHA256
    assert rows["arcface"]["default"]
