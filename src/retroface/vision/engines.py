"""Concrete engines and the factory that picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retroface.vision.alignment import align_face
from retroface.vision.arcface import ArcFaceRecogniser
from retroface.vision.quality import QualityPolicy, measure_quality
from retroface.vision.scrfd import ScrfdDetector
from retroface.vision.types import Face, FaceEngine, ImageArray, ModelIdentity
from retroface.vision.weights import OnnxModelSet, default_model_set, folder_model_set

if TYPE_CHECKING:
    from retroface.config import Settings

BACKENDS = ("arcface", "dlib")

#: Bumped whenever detection or alignment changes what embeddings come out, so that templates
#: (and cached evaluation embeddings) from an older pipeline are never mixed with new ones.
#: 2: small images are no longer enlarged before detection.
ARCFACE_PIPELINE = 2


class ArcFaceEngine:
    """SCRFD detection, 5-point alignment and ArcFace embedding, all on onnxruntime."""

    def __init__(
        self,
        models: OnnxModelSet | None = None,
        det_size: int = 640,
        det_threshold: float = 0.5,
        threads: int | None = None,
        flip: bool = False,
        quality_policy: QualityPolicy | None = None,
    ) -> None:
        self.models = models or default_model_set()
        self.detector = ScrfdDetector(
            self.models.detector.path,
            input_size=det_size,
            score_threshold=det_threshold,
            threads=threads,
        )
        self.recogniser = ArcFaceRecogniser(self.models.recogniser.path, threads=threads)
        self.flip = flip
        self.quality_policy = quality_policy or QualityPolicy()
        self.identity = ModelIdentity(
            backend="arcface",
            name=self.models.name + ("+flip" if flip else ""),
            version=f"{self.models.version}.p{ARCFACE_PIPELINE}",
            embedding_size=self.recogniser.embedding_size,
            licence=self.models.licence,
            weights=(self.models.detector, self.models.recogniser),
        )

    def analyse(self, image: ImageArray) -> list[Face]:
        dets = self.detector.detect(image)
        if len(dets) == 0:
            return []
        crops = [align_face(image, lm, self.recogniser.crop_size) for lm in dets.landmarks]
        embeddings = self.recogniser.embed(crops, flip=self.flip)
        faces = []
        for i, crop in enumerate(crops):
            score = float(dets.scores[i])
            faces.append(
                Face(
                    box=tuple(float(v) for v in dets.boxes[i]),  # type: ignore[arg-type]
                    landmarks=dets.landmarks[i],
                    det_score=score,
                    crop=crop,
                    quality=measure_quality(crop, dets.landmarks[i], score, self.quality_policy),
                    embedding=embeddings[i],
                    model=self.identity,
                )
            )
        return faces


def create_engine(
    backend: str = "arcface",
    *,
    models_dir: Path | None = None,
    det_size: int = 640,
    det_threshold: float = 0.5,
    threads: int | None = None,
    flip: bool = False,
    quality_policy: QualityPolicy | None = None,
) -> FaceEngine:
    """Build the named backend; raises ``ModelUnavailableError`` with a clear message."""
    if backend == "arcface":
        models = folder_model_set(models_dir) if models_dir else None
        return ArcFaceEngine(
            models,
            det_size=det_size,
            det_threshold=det_threshold,
            threads=threads,
            flip=flip,
            quality_policy=quality_policy,
        )
    if backend == "dlib":
        from retroface.vision.dlib_backend import DlibEngine

        return DlibEngine(quality_policy=quality_policy, threads=threads)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def engine_from_settings(
    settings: Settings | None = None, threads: int | None = None
) -> FaceEngine:
    """The configured engine; ``threads`` overrides ``RETROFACE_THREADS`` (0 = all cores)."""
    from retroface.config import get_settings

    s = settings or get_settings()
    return create_engine(
        s.backend,
        models_dir=s.models_dir,
        det_size=s.det_size,
        det_threshold=s.det_threshold,
        threads=threads or s.threads or None,
        flip=s.flip,
    )


def prominence(face: Face, image_shape: tuple[int, ...]) -> float:
    """How much a face is *the* subject of a photo: its area, discounted by distance from centre."""
    h, w = image_shape[:2]
    diag = float(np.hypot(w, h))
    fx, fy = (face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0
    off_centre = float(np.hypot(fx - w / 2.0, fy - h / 2.0)) / diag
    return face.area * (1.0 - off_centre) ** 2


def primary_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face a single-subject photo is about (largest, favouring the one nearest the centre)."""
    if not faces:
        return None
    return max(faces, key=lambda f: prominence(f, image_shape))
