"""5-point similarity alignment to the ArcFace 112x112 template.

The recogniser was trained on crops warped with exactly this template and a least-squares
similarity transform (Umeyama); any other crop costs accuracy.
"""

from __future__ import annotations

import cv2
import numpy as np

from retroface.vision.types import FloatArray, ImageArray

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(src: FloatArray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama's closed form; returns the 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / n
    scale = float((sig * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = t
    return m


def align_face(image: ImageArray, landmarks: FloatArray, size: int = 112) -> ImageArray:
    """Warp the face to the canonical ArcFace crop of ``size`` x ``size`` pixels."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    m = similarity_transform(landmarks, template)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return np.ascontiguousarray(crop, dtype=np.uint8)
