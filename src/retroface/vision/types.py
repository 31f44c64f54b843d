"""Value types shared by every face backend.

A backend turns an RGB image into :class:`Face` objects; everything downstream (gallery, search,
evaluation) depends only on these types and on :class:`FaceEngine`, never on a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
ImageArray = NDArray[np.uint8]


@dataclass(frozen=True)
class WeightFile:
    """One weight file a model was loaded from, with the hash that was verified at load."""

    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced an embedding: templates from different models never mix."""

    backend: str
    name: str
    version: str
    embedding_size: int
    licence: str
    weights: tuple[WeightFile, ...] = ()

    @property
    def key(self) -> str:
        """Stable identifier stored with every template (name, version and weight hashes)."""
        digest = "+".join(w.sha256[:12] for w in self.weights)
        return f"{self.backend}/{self.name}@{self.version}" + (f"#{digest}" if digest else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "name": self.name,
            "version": self.version,
            "embedding_size": self.embedding_size,
            "licence": self.licence,
            "key": self.key,
            "weights": [{"name": w.name, "path": w.path, "sha256": w.sha256} for w in self.weights],
        }


@dataclass(frozen=True)
class Quality:
    """Measures that predict whether a face is fit to search with, and the verdict on them."""

    inter_eye_px: float
    det_score: float
    sharpness: float
    brightness: float
    contrast: float
    yaw_deg: float
    roll_deg: float
    acceptable: bool = True
    reasons: tuple[str, ...] = ()
    #: Expected chance that a search with this face finds its mate (the calibrated probe
    #: quality model, :mod:`retroface.vision.probe_quality`); None where no model applies.
    hit_chance: float | None = None
    #: "good", "fair" or "poor" from ``hit_chance``; "" where no model applies.
    verdict: str = ""
    #: Length of the recogniser's raw (unnormalised) embedding; 0 where the backend has none.
    embedding_norm: float = 0.0
    #: The probe quality model's inputs (:data:`retroface.vision.probe_quality.FEATURES`),
    #: kept so an evaluation can refit the model; empty where the backend has none.
    features: tuple[float, ...] = ()

    @property
    def outlook(self) -> str:
        """The sentence shown before a search ("probes like this find their mate in ...")."""
        return "" if self.hit_chance is None else outlook_sentence(self.hit_chance)

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.hit_chance is not None:
            extra = {
                "hit_chance": round(self.hit_chance, 4),
                "verdict": self.verdict,
                "outlook": self.outlook,
                "embedding_norm": round(self.embedding_norm, 3),
            }
        return {
            "inter_eye_px": round(self.inter_eye_px, 2),
            "det_score": round(self.det_score, 4),
            "sharpness": round(self.sharpness, 2),
            "brightness": round(self.brightness, 2),
            "contrast": round(self.contrast, 2),
            "yaw_deg": round(self.yaw_deg, 1),
            "roll_deg": round(self.roll_deg, 1),
            "acceptable": self.acceptable,
            "reasons": list(self.reasons),
            **extra,
        }


@dataclass
class Face:
    """A detected face: where it is, how good it is and its L2-normalised embedding."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    landmarks: FloatArray  # (5, 2): right eye, left eye (image left to right), nose, mouth corners
    det_score: float
    crop: ImageArray  # aligned RGB crop the embedding was computed from
    quality: Quality
    embedding: FloatArray
    model: ModelIdentity
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "box": [round(float(v), 1) for v in self.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "det_score": round(float(self.det_score), 4),
            "quality": self.quality.to_dict(),
        }
        if with_embedding:
            data["embedding"] = [float(v) for v in self.embedding]
        return data


@runtime_checkable
class FaceEngine(Protocol):
    """The one protocol every backend implements."""

    identity: ModelIdentity

    def analyse(self, image: ImageArray) -> list[Face]:
        """Detect, align, assess and embed every face in an RGB ``uint8`` image (H, W, 3)."""
        ...


def outlook_sentence(chance: float) -> str:
    """What a probe's expected chance of finding its mate means, in the operator's words."""
    pct = round(chance * 100)
    if pct >= 99:
        text = "over 99%"
    elif pct < 1:
        text = "under 1%"
    else:
        text = f"about {pct}%"
    return f"probes like this find their mate in {text} of searches"


def l2_normalise(vectors: FloatArray) -> FloatArray:
    """Row-wise unit length; zero rows stay zero instead of becoming NaN."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32)
