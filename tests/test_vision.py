"""The default face engine on real images with its real weights."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from retroface.media.images import load_image
from retroface.vision.alignment import ARCFACE_TEMPLATE, align_face, similarity_transform
from retroface.vision.engines import create_engine, primary_face
from retroface.vision.quality import QualityPolicy, measure_quality, pose_from_landmarks
from retroface.vision.types import FaceEngine
from retroface.vision.weights import (
    VECTRON_FILES,
    ModelUnavailableError,
    folder_model_set,
    vectron_model_dir,
)


def best(engine: FaceEngine, path: Path) -> np.ndarray:
    img = load_image(path)
    face = primary_face(engine.analyse(img), img.shape)
    assert face is not None, f"no face in {path}"
    return face.embedding


def test_finds_both_faces_in_group_photo(engine: FaceEngine, data_dir: Path) -> None:
    img = load_image(data_dir / "people/_multi_face_scenes/obama_and_biden.jpg")
    faces = engine.analyse(img)
    assert len(faces) >= 2
    obama = best(engine, data_dir / "people/barack_obama/obama.jpg")
    biden = best(engine, data_dir / "people/joe_biden/biden.jpg")
    sims_obama = [float(f.embedding @ obama) for f in faces]
    sims_biden = [float(f.embedding @ biden) for f in faces]
    # each person is found, and as different faces
    assert max(sims_obama) > 0.4 and max(sims_biden) > 0.4
    assert int(np.argmax(sims_obama)) != int(np.argmax(sims_biden))


def test_face_fields(engine: FaceEngine, data_dir: Path) -> None:
    img = load_image(data_dir / "lfw/AJ_Cook/AJ_Cook_0001.jpg")
    (face,) = engine.analyse(img)
    assert face.crop.shape == (112, 112, 3)
    assert face.landmarks.shape == (5, 2)
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert face.embedding.shape == (512,)
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
    assert face.quality.inter_eye_px > 20 and face.quality.acceptable
    ident = face.model
    assert ident.embedding_size == 512 and "non-commercial" in ident.licence
    assert {w.sha256 for w in ident.weights} == set(VECTRON_FILES.values())


def test_same_person_scores_above_different(engine: FaceEngine, data_dir: Path) -> None:
    o1 = best(engine, data_dir / "people/barack_obama/obama.jpg")
    o2 = best(engine, data_dir / "people/barack_obama/obama2.jpg")
    b1 = best(engine, data_dir / "people/joe_biden/biden.jpg")
    same, diff = float(o1 @ o2), float(o1 @ b1)
    assert same > 0.5 and diff < 0.25 and same - diff > 0.3


def test_flip_augmentation_keeps_identity(data_dir: Path) -> None:
    flip = create_engine("arcface", flip=True)
    a = best(flip, data_dir / "people/barack_obama/obama.jpg")
    b = best(flip, data_dir / "people/barack_obama/obama2.jpg")
    assert float(a @ b) > 0.5
    assert flip.identity.name.endswith("+flip")


def test_central_face_found_on_500_lfw_images(engine: FaceEngine, data_dir: Path) -> None:
    paths = sorted((data_dir / "lfw").glob("*/*.jpg"))
    sample = random.Random(7).sample(paths, 500)
    found = 0
    for p in sample:
        img = load_image(p)
        face = primary_face(engine.analyse(img), img.shape)
        # the central face: its box contains the image centre
        if face is not None and face.box[0] < 125 < face.box[2] and face.box[1] < 125 < face.box[3]:
            found += 1
    assert found / len(sample) >= 0.99, f"central face found in {found}/500"


def test_no_face_in_blank_image(engine: FaceEngine) -> None:
    assert engine.analyse(np.full((480, 640, 3), 127, np.uint8)) == []


def test_alignment_maps_landmarks_onto_template() -> None:
    rng = np.random.default_rng(0)
    angle, scale, shift = 0.3, 2.5, np.array([40.0, -12.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (ARCFACE_TEMPLATE @ rot.T) * scale + shift + rng.normal(0, 0.01, (5, 2))
    m = similarity_transform(src.astype(np.float32), ARCFACE_TEMPLATE)
    mapped = src @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 0.1
    img = np.zeros((400, 400, 3), np.uint8)
    assert align_face(img, src.astype(np.float32)).shape == (112, 112, 3)


def test_pose_and_quality_verdict() -> None:
    frontal = ARCFACE_TEMPLATE.astype(np.float32)
    yaw, roll = pose_from_landmarks(frontal)
    assert abs(yaw) < 5 and abs(roll) < 2
    turned = frontal.copy()
    turned[2, 0] = frontal[1, 0] + 2  # nose beyond the far eye: profile
    assert abs(pose_from_landmarks(turned)[0]) > 60
    flat = np.full((112, 112, 3), 128, np.uint8)
    q = measure_quality(flat, frontal / 10, 0.3, QualityPolicy())
    assert not q.acceptable
    text = " ".join(q.reasons)
    for word in ("too small", "weak detection", "blurred", "low contrast"):
        assert word in text


def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    src = vectron_model_dir()
    for name in VECTRON_FILES:
        shutil.copy(src / name, tmp_path / name)
    manifest = {
        "detector": {"file": "scrfd_500m_bnkps.onnx", "sha256": "0" * 64},
        "recogniser": {"file": "w600k_mbf.onnx", "sha256": VECTRON_FILES["w600k_mbf.onnx"]},
    }
    (tmp_path / "retroface-models.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelUnavailableError, match="refusing to load a modified"):
        folder_model_set(tmp_path)


def test_local_model_folder_plugs_in(tmp_path: Path, data_dir: Path) -> None:
    src = vectron_model_dir()
    for name in VECTRON_FILES:
        shutil.copy(src / name, tmp_path / name)
    manifest = {
        "name": "local-test",
        "version": "7",
        "licence": "test licence",
        "detector": {
            "file": "scrfd_500m_bnkps.onnx",
            "sha256": VECTRON_FILES["scrfd_500m_bnkps.onnx"],
        },
        "recogniser": {"file": "w600k_mbf.onnx", "sha256": VECTRON_FILES["w600k_mbf.onnx"]},
    }
    (tmp_path / "retroface-models.json").write_text(json.dumps(manifest))
    eng = create_engine("arcface", models_dir=tmp_path)
    assert eng.identity.name == "local-test" and eng.identity.licence == "test licence"
    assert len(eng.analyse(load_image(data_dir / "lfw/AJ_Cook/AJ_Cook_0001.jpg"))) == 1
    # without a manifest the files are found by name, licence recorded as unknown
    (tmp_path / "retroface-models.json").unlink()
    assert "unknown" in folder_model_set(tmp_path).licence


def test_model_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not a folder"):
        folder_model_set(tmp_path / "nope")
    with pytest.raises(ModelUnavailableError, match="must hold one detector"):
        folder_model_set(tmp_path)
    (tmp_path / "det_model.onnx").write_bytes(b"not onnx")
    (tmp_path / "rec.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailableError, match="could not load ONNX model"):
        create_engine("arcface", models_dir=tmp_path)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        create_engine("nope")


def test_one_engine_builder_for_settings_options_and_overrides(tmp_path: Path) -> None:
    """``build_engine`` is the one builder: from settings, from options (what Ray and
    evaluation workers get) or through ``create_engine``, the same choices give the same key."""
    from retroface.config import Settings
    from retroface.vision.engines import EngineOptions, build_engine, engine_options

    settings = Settings(home=tmp_path, det_size=1280, flip=True)
    opts = engine_options(settings, det_size=640)
    assert opts == EngineOptions(det_size=640, flip=True)
    assert EngineOptions.from_dict(opts.to_dict() | {"ignored": 1}) == opts
    from_settings = build_engine(settings, det_size=640, threads=1)
    from_options = build_engine(opts, threads=1)
    direct = create_engine("arcface", flip=True, threads=1)
    assert from_settings.identity.key == from_options.identity.key == direct.identity.key
    assert "+flip" in direct.identity.name
    assert build_engine(settings, flip=False, threads=1).identity.name == (
        create_engine("arcface", threads=1).identity.name
    )


def test_unavailable_providers_fall_back_to_cpu_with_the_same_model(
    engine: FaceEngine,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``RETROFACE_PROVIDERS=cuda,cpu`` on a machine without CUDA: a warning, the CPU runs the
    models, and nothing about the model changes (same key, same embeddings)."""
    import onnxruntime as ort

    from retroface.config import Settings
    from retroface.vision import onnx_runtime
    from retroface.vision.engines import ArcFaceEngine, build_engine

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot be seen here")
    monkeypatch.setattr(onnx_runtime, "_warned", set())  # warnings are once a process
    image = load_image(data_dir / "people/joe_biden/biden.jpg")
    with caplog.at_level("WARNING", logger="retroface.vision"):
        gpu = build_engine(Settings(providers="cuda,cpu"))
    assert "CUDAExecutionProvider is not in this onnxruntime build" in caplog.text
    assert isinstance(gpu, ArcFaceEngine)
    assert gpu.providers["recogniser"] == ["CPUExecutionProvider"]
    assert gpu.identity.key == engine.identity.key
    ours, theirs = gpu.analyse(image), engine.analyse(image)
    assert len(ours) == len(theirs) >= 1
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.box == b.box


def test_providers_setting_is_checked() -> None:
    from retroface.vision.onnx_runtime import parse_providers, resolve_providers

    assert parse_providers("openvino, CPU,cpu") == (
        "OpenVINOExecutionProvider",
        "CPUExecutionProvider",
    )
    assert parse_providers("") == () and parse_providers(None) == ()
    assert parse_providers(["TensorrtExecutionProvider"]) == ("TensorrtExecutionProvider",)
    # whatever is asked for, the CPU is always last in line
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("openvino")[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelUnavailableError, match="unknown execution provider 'gpu'"):
        parse_providers("gpu,cpu")
