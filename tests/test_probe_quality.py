"""Small-face second look, the calibrated probe quality model and its fitting, on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from tests.conftest import add_team, enrol_people

from retroface.context import AppContext
from retroface.eval.degrade import DegradeSpec, degrade_image
from retroface.eval.quality_fit import (
    QualitySamples,
    choose_poor_cutoff,
    identity_folds,
    out_of_fold,
)
from retroface.media.images import load_image
from retroface.search.service import ProbeProvenance
from retroface.storage.tables import SearchRecord
from retroface.vision.engines import (
    ArcFaceEngine,
    analyse_probe,
    primary_face,
    second_look_factors,
)
from retroface.vision.probe_quality import (
    FEATURES,
    HitChanceModel,
    fit_logistic,
    model_for,
    shipped_model,
)
from retroface.vision.types import FaceEngine


def _lfw_sample(data_dir: Path, n: int = 10) -> list[Path]:
    return sorted((data_dir / "lfw").glob("*/*_0001.jpg"))[: 4 * n : 4]


def test_small_image_gets_a_second_look(engine: FaceEngine, data_dir: Path) -> None:
    """LFW faces shrunk to 16 px wide in a small image (no enlarging, like a hand-cropped
    CCTV still): SCRFD as it is misses some; the engine's second look at an enlarged copy
    finds them, and every face found the first time keeps its exact embedding."""
    assert isinstance(engine, ArcFaceEngine)
    assert second_look_factors((45, 45, 3), 640) == (2.0, 4.0)
    assert second_look_factors((250, 250, 3), 640) == (2.0, 0.5)
    assert second_look_factors((720, 1280, 3), 640) == (0.5, 0.25)
    direct = second = 0
    for path in _lfw_sample(data_dir):
        image = load_image(path)
        box = tuple(float(v) for v in engine.detector.detect(image).boxes[0])
        small = degrade_image(image, box, DegradeSpec(16, upscale=False)).small  # type: ignore[arg-type]
        first = engine.detector.detect(small)
        faces = engine.analyse(small)
        direct += len(first) > 0
        second += len(faces) > 0
        if len(first) > 0:  # found the first time: the same detections, no second look
            assert np.array_equal(faces[0].landmarks, first.landmarks[0])
    assert direct < 10, "every face was found directly: the test no longer tests the fallback"
    assert second > direct


def test_shipped_model_loads_and_applies_to_the_default_engine(engine: FaceEngine) -> None:
    model = shipped_model()
    assert model is not None
    assert model.features == FEATURES
    assert 0 < model.poor_below <= model.fair_below < 1
    ident = engine.identity
    assert model_for(ident.backend, ident.name, ident.version) is model
    assert model_for("dlib", ident.name, ident.version) is None
    assert model_for(ident.backend, ident.name, "9.p9") is None
    assert HitChanceModel.from_dict(model.to_dict()) == model


def test_degraded_face_gets_a_lower_chance_than_the_original(
    engine: FaceEngine, data_dir: Path
) -> None:
    image = load_image(data_dir / "lfw" / "AJ_Cook" / "AJ_Cook_0001.jpg")
    clean = primary_face(engine.analyse(image), image.shape)
    assert clean is not None and clean.quality.hit_chance is not None
    assert clean.quality.verdict == "good"
    assert len(clean.quality.features) == len(FEATURES)
    chances = [clean.quality.hit_chance]
    for width in (40, 16):
        degraded = degrade_image(image, clean.box, DegradeSpec(width)).image
        face = primary_face(engine.analyse(degraded), degraded.shape)
        assert face is not None and face.quality.hit_chance is not None
        chances.append(face.quality.hit_chance)
    assert chances[0] > chances[1] > chances[2]
    assert face.quality.verdict == "poor"
    shown = face.quality.to_dict()
    assert shown["verdict"] == "poor"
    assert shown["outlook"].startswith("probes like this find their mate in ")
    assert shown["outlook"].endswith("% of searches")
    assert shown["embedding_norm"] < clean.quality.to_dict()["embedding_norm"]


def test_fit_logistic_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)) * [2.0, 0.5] + [1.0, -3.0]
    z = (x - [1.0, -3.0]) / [2.0, 0.5]
    p = 1 / (1 + np.exp(-(0.5 + 2.0 * z[:, 0] - 1.0 * z[:, 1])))
    y = rng.random(4000) < p
    mean, scale, coef, icpt = fit_logistic(x, y, l2=0.0)
    assert np.allclose(mean, [1.0, -3.0], atol=0.1)
    assert np.allclose(scale, [2.0, 0.5], rtol=0.1)
    assert coef == pytest.approx([2.0, -1.0], abs=0.15)
    assert icpt == pytest.approx(0.5, abs=0.12)


def test_folds_are_identity_disjoint_and_cutoff_bounds_flagged_hits() -> None:
    rng = np.random.default_rng(1)
    ids = [f"person{i // 3}" for i in range(900)]
    folds = identity_folds(ids, 5)
    for i in range(0, 900, 3):
        assert folds[i] == folds[i + 1] == folds[i + 2]
    assert set(folds.tolist()) == set(range(5))
    width = np.array([0, 16, 40] * 300)
    x = np.column_stack([rng.normal(size=900) + (width == 0) * 3 - (width == 16) * 2] * 1)
    feats = np.repeat(x, len(FEATURES), axis=1).astype(np.float32)
    hit = rng.random(900) < 1 / (1 + np.exp(-2 * x[:, 0]))
    s = QualitySamples(feats, hit, ids, width)
    chance = out_of_fold(s)
    assert not np.isnan(chance).any()
    clean_hits = (width == 0) & hit
    degraded_misses = (width > 0) & ~hit
    cut = choose_poor_cutoff(chance, s, 0.9, 0.05)
    assert (chance[degraded_misses] < cut).mean() >= 0.9
    assert (chance[clean_hits] < cut).mean() <= 0.05
    # the lowest such cut-off: one step lower and the coverage falls short
    assert (chance[degraded_misses] < np.nextafter(cut, 0)).mean() < 0.9
    # a strict bound on flagged clean hits wins over the coverage
    strict = choose_poor_cutoff(chance, s, 0.999, 0.0)
    assert (chance[clean_hits] < strict).sum() == 0


def test_probe_outlook_is_shown_before_and_recorded_with_the_search(
    app: AppContext, data_dir: Path
) -> None:
    """The operator sees the probe's chance before searching; the search record keeps it, and
    the probe was embedded with test-time flip (not the plain enrolment embedding)."""
    team = add_team(app, {"olive": "operator", "arthur": "authoriser"}, "a long test password")
    enrol_people(app, data_dir)
    olive = team["olive"]
    app.cases.open(
        olive, "Q1", "robbery", "identify the suspect", "serious offence; the still is the lead"
    )
    app.cases.authorise(team["arthur"], "Q1", True, "proportionate")
    data = (data_dir / "people/barack_obama/obama2.jpg").read_bytes()
    prov = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")
    probe = app.searches.add_probe(olive, "Q1", data, "obama2.jpg", prov)
    shown = probe.faces[0].quality
    assert shown["verdict"] in {"good", "fair", "poor"}
    assert shown["outlook"].startswith("probes like this find their mate in ")
    result = app.searches.search(olive, "Q1", probe.probe_id)
    assert result.probe.quality["outlook"] == shown["outlook"]
    with app.db.session() as s:
        rec = s.scalars(select(SearchRecord)).one()
        assert rec.probe_quality["hit_chance"] == shown["hit_chance"]
    image = load_image(data_dir / "people/barack_obama/obama2.jpg")
    plain = primary_face(app.engine.analyse(image), image.shape)
    as_probe = primary_face(analyse_probe(app.engine, image), image.shape)
    assert plain is not None and as_probe is not None
    assert 0.9 < float(plain.embedding @ as_probe.embedding) < 0.99999
