"""Per-face quality measures and a verdict against configurable minimums.

A search with a poor probe mostly returns noise; telling the operator *why* a probe is weak (too
small, blurred, turned away) is the cheapest accuracy safeguard there is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from retroface.vision.probe_quality import HitChanceModel, quality_features
from retroface.vision.types import FloatArray, ImageArray, Quality


@dataclass(frozen=True)
class QualityPolicy:
    """Minimums a face must meet; each failed one becomes a reason in the verdict."""

    min_inter_eye_px: float = 20.0
    min_det_score: float = 0.6
    min_sharpness: float = 30.0
    min_brightness: float = 40.0
    max_brightness: float = 220.0
    min_contrast: float = 20.0
    max_abs_yaw_deg: float = 45.0
    max_abs_roll_deg: float = 35.0


def pose_from_landmarks(landmarks: FloatArray) -> tuple[float, float]:
    """Rough yaw and roll in degrees from the 5 points (eyes, nose, mouth corners).

    Roll is the angle of the eye line. Yaw comes from how far the nose sits off the midline between
    the eyes relative to half the eye distance: 0 frontal, about +/-90 in profile.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    right_eye, left_eye, nose = lm[0], lm[1], lm[2]
    dx, dy = left_eye - right_eye
    roll = math.degrees(math.atan2(dy, dx))
    eye_dist = math.hypot(dx, dy)
    if eye_dist < 1e-6:
        return 0.0, roll
    # project the nose onto the eye line, measured from the eye midpoint
    mid = (right_eye + left_eye) / 2.0
    unit = np.array([dx, dy]) / eye_dist
    offset = float(np.dot(nose - mid, unit)) / (eye_dist / 2.0)
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, offset))))
    return yaw, roll


def measure_quality(
    crop: ImageArray,
    landmarks: FloatArray,
    det_score: float,
    policy: QualityPolicy | None = None,
    *,
    embedding_norm: float = 0.0,
    hit_model: HitChanceModel | None = None,
) -> Quality:
    """Measure a face from its aligned crop and its landmarks in the source image; with a
    ``hit_model`` (and the raw embedding's length) also its expected chance of finding its
    mate and the good/fair/poor verdict on that chance."""
    policy = policy or QualityPolicy()
    lm = np.asarray(landmarks, dtype=np.float64)
    inter_eye = float(np.linalg.norm(lm[1] - lm[0]))
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    # centre of the crop only: the borders of a warped crop are often padding
    h, w = grey.shape
    centre = grey[h // 8 : h - h // 8, w // 8 : w - w // 8]
    sharpness = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    brightness = float(centre.mean())
    contrast = float(centre.std())
    yaw, roll = pose_from_landmarks(lm.astype(np.float32))

    reasons: list[str] = []
    if inter_eye < policy.min_inter_eye_px:
        reasons.append(
            f"face too small: {inter_eye:.0f} px between the eyes "
            f"(minimum {policy.min_inter_eye_px:.0f})"
        )
    if det_score < policy.min_det_score:
        reasons.append(
            f"weak detection: score {det_score:.2f} (minimum {policy.min_det_score:.2f})"
        )
    if sharpness < policy.min_sharpness:
        reasons.append(f"blurred: sharpness {sharpness:.0f} (minimum {policy.min_sharpness:.0f})")
    if brightness < policy.min_brightness:
        reasons.append(
            f"too dark: brightness {brightness:.0f} (minimum {policy.min_brightness:.0f})"
        )
    if brightness > policy.max_brightness:
        reasons.append(
            f"over-exposed: brightness {brightness:.0f} (maximum {policy.max_brightness:.0f})"
        )
    if contrast < policy.min_contrast:
        reasons.append(f"low contrast: {contrast:.0f} (minimum {policy.min_contrast:.0f})")
    if abs(yaw) > policy.max_abs_yaw_deg:
        reasons.append(f"turned away: yaw about {yaw:.0f} deg (limit {policy.max_abs_yaw_deg:.0f})")
    if abs(roll) > policy.max_abs_roll_deg:
        reasons.append(f"head tilted: roll {roll:.0f} deg (limit {policy.max_abs_roll_deg:.0f})")
    chance: float | None = None
    verdict = ""
    features: tuple[float, ...] = ()
    if embedding_norm > 0:  # only backends with a raw embedding feed the probe quality model
        x = quality_features(
            crop, inter_eye, sharpness, det_score, yaw, roll, brightness, contrast, embedding_norm
        )
        features = tuple(float(v) for v in x)
        if hit_model is not None:
            chance = hit_model.chance(x)
            verdict = hit_model.verdict(chance)
    return Quality(
        inter_eye_px=inter_eye,
        det_score=float(det_score),
        sharpness=sharpness,
        brightness=brightness,
        contrast=contrast,
        yaw_deg=yaw,
        roll_deg=roll,
        acceptable=not reasons,
        reasons=tuple(reasons),
        hit_chance=chance,
        verdict=verdict,
        embedding_norm=float(embedding_norm),
        features=features,
    )
