"""How likely a probe is to find its mate: a small calibrated model over quality measures.

The policy minimums in :mod:`retroface.vision.quality` say whether a face breaks a rule (too
small, too dark); on degraded LFW they flagged misses and hits alike (lift 0.99 at 40 px), so
they told the operator nothing about the search to come. This model instead answers the
operator's question, "will this probe find its mate?", as a probability: a logistic regression
over measures taken at analysis time, fitted on real searches (``bench/fit_probe_quality.py``:
LFW probes clean and degraded to CCTV-like face widths, identity-disjoint folds) and shipped as
a small JSON file next to this module. Its verdict (good / fair / poor) comes from cut-offs
chosen on those searches: "poor" covers at least 90% of the degraded probes that missed while
flagging at most 5% of full-size probes that hit.

What the measures capture and why:
- ``detail``: energy the aligned crop loses when shrunk to a quarter and enlarged again. An
  enlarged CCTV still is as large as a portrait in pixels but has no fine detail; inter-ocular
  distance in pixels cannot see that, this can (the face's *effective* resolution).
- ``log_norm``: the length of the recogniser's raw embedding, which grows with how much
  identity evidence the network found (the idea behind MagFace); poor faces get short vectors.
- ``log_sharpness``, ``det_score``, pose, exposure: the classic measures, kept because the
  regression decides their weight, not a hand-set minimum.

The model belongs to the weights it was fitted with: it is applied only when the engine's model
name and version match the file's, else the chance is unknown (``None``), never guessed.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cv2
import numpy as np

from retroface.vision.types import FloatArray, ImageArray, outlook_sentence

FEATURES = (
    "log_inter_eye",
    "log_sharpness",
    "detail",
    "log_norm",
    "det_score",
    "abs_yaw",
    "abs_roll",
    "brightness",
    "contrast",
)
MODEL_FILE = "probe_quality.json"


def crop_detail(crop: ImageArray) -> float:
    """log(1 + mean squared difference between the crop's centre and itself shrunk to a
    quarter and enlarged back): high for a sharp face, near the JPEG noise floor for an
    enlarged small one."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = grey.shape
    small = cv2.resize(grey, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    diff = (grey - back)[h // 8 : h - h // 8, w // 8 : w - w // 8]
    return float(math.log1p(float((diff * diff).mean())))


def quality_features(
    crop: ImageArray,
    inter_eye_px: float,
    sharpness: float,
    det_score: float,
    yaw_deg: float,
    roll_deg: float,
    brightness: float,
    contrast: float,
    embedding_norm: float,
) -> FloatArray:
    """The model's inputs, in :data:`FEATURES` order."""
    return np.array(
        [
            math.log(max(inter_eye_px, 1.0)),
            math.log1p(max(sharpness, 0.0)),
            crop_detail(crop),
            math.log(max(embedding_norm, 1e-3)),
            det_score,
            abs(yaw_deg) / 45.0,
            abs(roll_deg) / 35.0,
            brightness / 255.0,
            contrast / 64.0,
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class HitChanceModel:
    """Standardised logistic regression: chance = sigmoid(intercept + coef . (x - mean) / scale)."""

    backend: str
    name: str
    version: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    #: verdict cut-offs on the chance: below ``poor_below`` poor, below ``fair_below`` fair
    poor_below: float
    fair_below: float
    fitted_on: dict[str, Any]

    def applies_to(self, backend: str, name: str, version: str) -> bool:
        return (backend, name.removesuffix("+flip"), version) == (
            self.backend,
            self.name,
            self.version,
        )

    def chance(self, x: FloatArray) -> float:
        z = (np.asarray(x, dtype=np.float64) - np.array(self.mean)) / np.array(self.scale)
        logit = self.intercept + float(np.dot(np.array(self.coef), z))
        return float(1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, logit)))))

    def verdict(self, chance: float) -> str:
        if chance < self.poor_below:
            return "poor"
        return "fair" if chance < self.fair_below else "good"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "name": self.name,
            "version": self.version,
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "poor_below": self.poor_below,
            "fair_below": self.fair_below,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HitChanceModel:
        feats = tuple(d["features"])
        if feats != FEATURES:
            raise ValueError(f"probe quality model features {feats} != {FEATURES}")
        n = len(feats)
        if not (len(d["mean"]) == len(d["scale"]) == len(d["coef"]) == n):
            raise ValueError("probe quality model: mean, scale and coef need one value a feature")
        return cls(
            backend=str(d["backend"]),
            name=str(d["name"]),
            version=str(d["version"]),
            features=feats,
            mean=tuple(float(v) for v in d["mean"]),
            scale=tuple(float(v) for v in d["scale"]),
            coef=tuple(float(v) for v in d["coef"]),
            intercept=float(d["intercept"]),
            poor_below=float(d["poor_below"]),
            fair_below=float(d["fair_below"]),
            fitted_on=dict(d.get("fitted_on", {})),
        )


def model_file(backend: str) -> str:
    """The file a backend's model ships in: ``probe_quality.json`` for the default (arcface),
    ``probe_quality_<backend>.json`` for another (each is fitted on its own searches)."""
    return MODEL_FILE if backend == "arcface" else f"probe_quality_{backend}.json"


def shipped_model(backend: str = "arcface") -> HitChanceModel | None:
    """The model shipped with the package for ``backend``, or None when its file is absent."""
    return _load_shipped(model_file(backend))


@functools.cache
def _load_shipped(name: str) -> HitChanceModel | None:
    """One file read once (cached by file name, so every call gets the same object)."""
    path = resources.files("retroface.vision").joinpath(name)
    if not path.is_file():
        return None
    return HitChanceModel.from_dict(json.loads(path.read_text(encoding="utf-8")))


def model_for(backend: str, name: str, version: str) -> HitChanceModel | None:
    """The shipped model if it was fitted for this recogniser and pipeline, else None."""
    model = shipped_model(backend)
    return model if model is not None and model.applies_to(backend, name, version) else None


def outlook(chance: float) -> str:
    """The sentence shown to the operator before a search."""
    return outlook_sentence(chance)


def fit_logistic(
    x: FloatArray, y: np.ndarray, l2: float = 1.0, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Newton's method for L2-regularised logistic regression on standardised features.

    Returns (mean, scale, coef, intercept). Plain numpy: the fit is tiny (a few thousand
    probes, nine features) and a dependency for it would be out of proportion.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([np.ones((x.shape[0], 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[0] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return mean, scale, w[1:], float(w[0])
