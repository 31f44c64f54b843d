"""CCTV-like probe degradation: how accuracy falls as the face gets small and compressed.

Retrospective probes are rarely portraits: a face 20-40 pixels wide in a compressed CCTV frame,
enlarged by whoever exported the still. The transform reproduces that chain on a good photo:
shrink the whole image until the face box is ``face_width`` pixels wide (area averaging, like a
distant camera's sensor), blur slightly (optics and motion), JPEG-compress hard (quality 30, a
typical recorder setting), then scale back up to the original size (as an exported, "enlarged"
still). The detector and recogniser then see an image of the usual size whose detail is that of
the small face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from retroface.vision.types import ImageArray


@dataclass(frozen=True)
class DegradeSpec:
    """One degradation setting; part of the embedding cache key."""

    face_width: int
    sigma: float = 0.8
    jpeg_quality: int = 30
    upscale: bool = True


@dataclass
class DegradedImage:
    image: ImageArray  # what the engine sees (original size when ``upscale``)
    small: ImageArray  # the low-resolution, compressed image (face ``face_width`` px wide)
    scale: float  # small / original


def parse_widths(text: str) -> list[int]:
    """``"40,24,16"`` -> ``[40, 24, 16]``; every width must be a positive integer."""
    widths: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 4:
            raise ValueError(f"face widths must be integers of at least 4 px, got {part!r}")
        widths.append(int(part))
    if not widths:
        raise ValueError("no face widths given")
    return widths


def jpeg_roundtrip(image: ImageArray, quality: int) -> ImageArray:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("JPEG decoding failed")
    return np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def degrade_image(
    image: ImageArray, face_box: tuple[float, float, float, float], spec: DegradeSpec
) -> DegradedImage:
    """Degrade ``image`` so the face in ``face_box`` (x1, y1, x2, y2) is ``spec.face_width`` px
    wide at capture. A face already narrower than that is not enlarged, only blurred and
    compressed. Deterministic, so degraded embeddings can be cached."""
    h, w = image.shape[:2]
    box_w = max(1.0, float(face_box[2] - face_box[0]))
    scale = min(1.0, spec.face_width / box_w)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    shrunk = (
        cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1.0 else image.copy()
    )
    if spec.sigma > 0:
        shrunk = cv2.GaussianBlur(shrunk, (0, 0), sigmaX=spec.sigma, sigmaY=spec.sigma)
    small = jpeg_roundtrip(np.asarray(shrunk, dtype=np.uint8), spec.jpeg_quality)
    out = (
        cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        if spec.upscale and (sw, sh) != (w, h)
        else small
    )
    return DegradedImage(np.ascontiguousarray(out, dtype=np.uint8), small, sw / w)
