"""Face images for people to look at: crops, aligned comparison crops, blurring, JPEG.

Everything here works on arrays in memory and returns arrays or JPEG bytes: a face shown to a
reviewer or an operator is decoded from the encrypted store, cropped, blurred and encoded
without a plaintext copy ever reaching the disk (the caller, :mod:`retroface.search.faces`,
decides who may see what).

Blurring is a mosaic followed by a Gaussian blur. A Gaussian alone can be partly undone when its
kernel is known (deconvolution); a mosaic of about six blocks across a face leaves too little to
recognise or to restore, and the blur after it hides the block edges that would otherwise be a
pattern to fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from retroface.vision.alignment import ARCFACE_TEMPLATE, similarity_transform
from retroface.vision.types import FloatArray, ImageArray

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels

#: A blurred face region reaches this far beyond the detector's box on each side (a fraction of
#: the box): the box is tight on the face, and hair, ears and chin identify people too.
BLUR_MARGIN = 0.3
#: Mosaic blocks across a blurred face: 6 leaves no recognisable feature at any face size.
MOSAIC_BLOCKS = 6
#: Each side of the ArcFace template's 112-pixel frame is padded by this fraction in the aligned
#: comparison crop, so the forehead, chin and hairline show (the recogniser's crop cuts them).
ALIGN_PADDING = 0.25
JPEG_QUALITY = 90


def expand_box(box: Box, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` of its size on each side, clipped to the image, as ints."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(1.0, x2 - x1), max(1.0, y2 - y1)
    height, width = int(shape[0]), int(shape[1])
    return (
        max(0, int(np.floor(x1 - margin * w))),
        max(0, int(np.floor(y1 - margin * h))),
        min(width, int(np.ceil(x2 + margin * w))),
        min(height, int(np.ceil(y2 + margin * h))),
    )


def _obscure(region: ImageArray, blocks: int = MOSAIC_BLOCKS) -> ImageArray:
    """A mosaic of ``blocks`` across the region's longer side, then a blur over the blocks."""
    h, w = region.shape[:2]
    if h == 0 or w == 0:
        return region
    step = max(1, max(h, w) // blocks)
    small = cv2.resize(region, (max(1, w // step), max(1, h // step)), interpolation=cv2.INTER_AREA)
    mosaic = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    k = step | 1  # an odd kernel about one block wide
    return np.ascontiguousarray(cv2.GaussianBlur(mosaic, (k, k), 0), dtype=np.uint8)


def blur_faces(
    image: ImageArray,
    boxes: Sequence[Box],
    *,
    keep: Box | None = None,
    margin: float = BLUR_MARGIN,
) -> ImageArray:
    """A copy of ``image`` with each face of ``boxes`` blurred (with ``margin`` around it).

    ``keep`` is a face that must stay visible even where a blurred neighbour's margin overlaps
    it: its own box is restored after the others are blurred.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    for box in boxes:
        x1, y1, x2, y2 = expand_box(box, margin, out.shape)
        out[y1:y2, x1:x2] = _obscure(out[y1:y2, x1:x2])
    if keep is not None:
        x1, y1, x2, y2 = expand_box(keep, 0.0, out.shape)
        out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    return out


def blur_all_but(image: ImageArray, keep: Box | None, margin: float = BLUR_MARGIN) -> ImageArray:
    """Everything blurred but the ``keep`` face (with its margin); all of it if None.

    For an image whose other faces were never recorded (a video frame stores only the tracked
    face): what is not the chosen face cannot be known to be free of faces, so none of it shows.
    """
    out = _obscure(np.asarray(image, dtype=np.uint8), blocks=24)
    if keep is not None:
        x1, y1, x2, y2 = expand_box(keep, margin, out.shape)
        out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    return out


def shrink(image: ImageArray, max_side: int) -> tuple[ImageArray, float]:
    """The image scaled down to at most ``max_side`` pixels on its longer side (never up)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)), scale


def face_crop(image: ImageArray, box: Box, margin: float = 0.5, max_side: int = 512) -> ImageArray:
    """A square crop centred on the face, ``margin`` of the face's size around it; areas past
    the image's edge are mid-grey. Scaled down to ``max_side`` if larger, never up: an examiner
    sees the resolution the face really has."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    out = max(1, round(side))
    m = np.array([[1.0, 0.0, side / 2 - cx], [0.0, 1.0, side / 2 - cy]])
    crop = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    return shrink(np.ascontiguousarray(crop, dtype=np.uint8), max_side)[0]


def display_transform(
    landmarks: FloatArray, size: int, padding: float = ALIGN_PADDING
) -> np.ndarray:
    """The 2x3 similarity transform taking a face's 5 landmarks onto the ArcFace template laid
    out in a ``size`` x ``size`` frame with ``padding`` around it: the recogniser's alignment,
    with room to see the whole head. Two faces aligned by it share eye positions and scale."""
    frame = 112.0 * (1 + 2 * padding)
    template = (ARCFACE_TEMPLATE + 112.0 * padding) * (size / frame)
    return similarity_transform(np.asarray(landmarks, dtype=np.float64), template)


def aligned_crop(
    image: ImageArray, landmarks: FloatArray, size: int = 256
) -> tuple[ImageArray, list[list[float]]]:
    """The face warped by :func:`display_transform`, and its 5 landmarks in that frame."""
    m = display_transform(landmarks, size)
    crop = cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)
    )
    return np.ascontiguousarray(crop, dtype=np.uint8), aligned_landmarks(landmarks, size)


def aligned_landmarks(landmarks: FloatArray, size: int = 256) -> list[list[float]]:
    """The 5 landmarks moved into the aligned frame (they sit near, not on, the template: the
    residual is how far this face is from the canonical shape)."""
    m = display_transform(landmarks, size)
    pts = np.asarray(landmarks, dtype=np.float64)
    moved = pts @ m[:, :2].T + m[:, 2]
    return [[round(float(x), 2), round(float(y), 2)] for x, y in moved]


def to_jpeg(image: ImageArray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB image, encoded in memory."""
    bgr = cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())
