"""dlib backend: HOG detection, 5-point shape predictor and the ResNet face descriptor.

Its weights are public domain, which makes it the backend a deployer can use without a commercial
licence; it is less accurate than ArcFace (about 98.9% LFW pair accuracy against 99.5%) and slower
on CPU. ``dlib`` is an optional dependency, imported only when an engine is built.

Landmarks follow the ArcFace engine's convention so quality measures and downstream code read the
same five points from either backend: eye on the image left, the other eye, nose tip, mouth corner
on the image left, the other mouth corner. dlib's 5-point model marks the two corners of each eye
and the bottom of the nose (subnasale) only, so:

* eye centres are the midpoints of their corner pairs;
* the nose tip and the mouth corners are predicted from the nose-bottom point, in a frame set by
  the eyes (origin at their midpoint, x along the eye line, y perpendicular towards the chin, unit
  = eye distance). With the nose bottom at ``(nx, ny)`` in that frame, the nose tip is at
  ``(1.44 nx, 1.05 ny - 0.24)`` and the mouth corners at ``(+-0.435 + 0.18 nx, 0.5 + 0.75 ny)``.
  The coefficients are a least-squares fit against SCRFD's landmarks on 493 LFW faces (RMS error
  0.08 eye distances for the nose, 0.13 for the mouth corners, against 0.22 and 0.15 for fixed
  average positions): good enough for pose and inter-eye quality measures, not for alignment,
  which uses dlib's own chip extraction from its real landmarks.

The HOG detector's score is a linear SVM margin, 0 at dlib's own decision threshold and about 1.7
for a typical frontal LFW face. ``det_score = 1 / (1 + exp(-2 * margin))`` maps it into 0..1 with
the detector's threshold at 0.5 and a typical face at about 0.97, so the default quality minimum
(0.6, a margin of 0.2) flags marginal detections just as it flags SCRFD's weak ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from retroface.vision.quality import QualityPolicy, measure_quality
from retroface.vision.types import Face, FloatArray, ImageArray, ModelIdentity, l2_normalise
from retroface.vision.weights import DLIB_LICENCE, ModelUnavailableError, verified

INSTALL_HINT = "the dlib backend needs `pip install 'retroface[dlib]'`"
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# Landmark estimates in the eye frame, from the nose-bottom point (see the module docstring).
_NOSE_TIP = ((1.44, 0.0, 0.0), (0.0, 1.05, -0.24))  # (coef nx, coef ny, constant) for x and y
_MOUTH_Y = (0.75, 0.5)  # coef ny, constant
_MOUTH_X = (0.435, 0.18)  # half width, coef nx


def _import_dlib() -> tuple[Any, Any]:
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        raise ModelUnavailableError(INSTALL_HINT) from None
    return dlib, face_recognition_models


def hog_margin_to_score(margin: float) -> float:
    """Map the HOG SVM margin to 0..1 with dlib's decision threshold (margin 0) at 0.5."""
    return 1.0 / (1.0 + math.exp(-2.0 * margin))


def five_points_from_dlib(points: FloatArray) -> FloatArray:
    """ArcFace-ordered landmarks from dlib's 5 points.

    dlib's order is: eye on the image right (outer, inner corner), eye on the image left (outer,
    inner corner), nose bottom.
    """
    p = np.asarray(points, dtype=np.float64)
    eye_l = (p[2] + p[3]) / 2.0  # image left
    eye_r = (p[0] + p[1]) / 2.0  # image right
    mid = (eye_l + eye_r) / 2.0
    v = eye_r - eye_l
    d = float(np.hypot(*v))
    if d < 1e-6:
        ex, ey, d = np.array([1.0, 0.0]), np.array([0.0, 1.0]), 1.0
    else:
        ex = v / d
        ey = np.array([-ex[1], ex[0]])
    nx, ny = float(np.dot(p[4] - mid, ex)) / d, float(np.dot(p[4] - mid, ey)) / d

    def point(x: float, y: float) -> np.ndarray:
        return mid + d * (x * ex + y * ey)

    (ax, bx, cx), (ay, by, cy) = _NOSE_TIP
    nose = point(ax * nx + bx * ny + cx, ay * nx + by * ny + cy)
    mouth_y = _MOUTH_Y[0] * ny + _MOUTH_Y[1]
    half, shift = _MOUTH_X
    mouth_l = point(-half + shift * nx, mouth_y)
    mouth_r = point(half + shift * nx, mouth_y)
    return np.stack([eye_l, eye_r, nose, mouth_l, mouth_r]).astype(np.float32)


class DlibEngine:
    """dlib's HOG frontal detector, 5-point shape predictor and ResNet v1 descriptor (128-D).

    ``threads`` is accepted for parity with the ArcFace engine but has no effect: the dlib-bin CPU
    build runs single-threaded (no BLAS), so parallel work needs processes. ``upsample`` doubles
    the image that many times before HOG: 1 finds faces down to about 40 px wide, 0 is about four
    times faster but misses faces under about 80 px. ``adjust_threshold`` shifts HOG's decision
    threshold: the default 0 is dlib's own operating point and misses 29 of the 6,175 LFW faces;
    -0.5 finds 27 of those but also adds false detections (2 in the 16 portraits of the test
    data), which the quality verdict then flags as weak detections.
    """

    def __init__(
        self,
        quality_policy: QualityPolicy | None = None,
        threads: int | None = None,
        upsample: int = 1,
        adjust_threshold: float = 0.0,
    ) -> None:
        dlib, models = _import_dlib()
        predictor = verified(Path(models.pose_predictor_five_point_model_location()), None)
        recogniser = verified(Path(models.face_recognition_model_location()), None)
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(predictor.path)
        self.recogniser = dlib.face_recognition_model_v1(recogniser.path)
        self.quality_policy = quality_policy or QualityPolicy()
        self.threads = threads
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)
        self.identity = ModelIdentity(
            backend="dlib",
            name="dlib_resnet_v1",
            version="1",
            embedding_size=128,
            licence=DLIB_LICENCE,
            weights=(predictor, recogniser),
        )

    def detect(self, image: ImageArray) -> list[tuple[Any, float, Any]]:
        """HOG detections as (rectangle, margin, full_object_detection), best margin first."""
        img = np.ascontiguousarray(image, dtype=np.uint8)
        rects, margins, _ = self.detector.run(img, self.upsample, self.adjust_threshold)
        found = [(r, float(m), self.predictor(img, r)) for r, m in zip(rects, margins, strict=True)]
        return sorted(found, key=lambda t: -t[1])

    def chips(self, image: ImageArray, shapes: list[Any]) -> list[ImageArray]:
        """dlib's own aligned 150x150 crops (the descriptor was trained on exactly these)."""
        img = np.ascontiguousarray(image, dtype=np.uint8)
        return [
            np.ascontiguousarray(
                self._dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            )
            for shape in shapes
        ]

    def embed_chips(self, chips: list[ImageArray]) -> FloatArray:
        """Unit-length descriptors for 150x150 chips cut by ``dlib.get_face_chip``, in one batch."""
        if not chips:
            return np.zeros((0, 128), dtype=np.float32)
        vectors = self.recogniser.compute_face_descriptor(chips)
        return l2_normalise(np.array([np.asarray(v) for v in vectors], dtype=np.float32))

    def analyse(self, image: ImageArray) -> list[Face]:
        img = np.ascontiguousarray(image, dtype=np.uint8)
        found = self.detect(img)
        if not found:
            return []
        h, w = img.shape[:2]
        chips = self.chips(img, [shape for _, _, shape in found])
        embeddings = self.embed_chips(chips)
        faces = []
        for (rect, margin, shape), chip, emb in zip(found, chips, embeddings, strict=True):
            raw = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float32)
            landmarks = five_points_from_dlib(raw)
            score = hog_margin_to_score(margin)
            box = (
                float(min(max(rect.left(), 0), w)),
                float(min(max(rect.top(), 0), h)),
                float(min(max(rect.right(), 0), w)),
                float(min(max(rect.bottom(), 0), h)),
            )
            faces.append(
                Face(
                    box=box,
                    landmarks=landmarks,
                    det_score=score,
                    crop=chip,
                    quality=measure_quality(chip, landmarks, score, self.quality_policy),
                    embedding=emb,
                    model=self.identity,
                    extra={"hog_margin": margin, "dlib_landmarks": raw.tolist()},
                )
            )
        return faces
