"""Probe enhancement: small, deterministic image operations with explicit parameters.

Examiners' tools let an operator crop, straighten, lighten and clean up a poor still before it is
searched. In a system that must disclose how a lead was found, each such operation has to be
reproducible from its record: the same input bytes and the same parameters give the same output
bytes. So every step here is a pure function of the image and its parameters (no defaults hidden
in code the record does not name: a parsed step carries every parameter, defaults filled in), and
the result is encoded losslessly (PNG, fixed compression level, no metadata such as a timestamp).

Determinism: none of these operations draws random numbers. OpenCV runs some of them on several
threads, but each splits the image into stripes whose output pixels depend only on the input, so
the thread count does not change the bytes (``tests/test_enhance.py`` applies every step with one
and with four OpenCV threads and compares); images are numpy arrays, so OpenCL (``UMat``) is never
used. The encoded bytes depend on the zlib and Pillow versions, so a derived image records the
library versions (:func:`tool_versions`) and the hash of its decoded pixels as well as of its
file: a re-check with other libraries compares the pixel hash.

Generative restoration (GFPGAN, CodeFormer and the like) is deliberately absent: it paints facial
detail learned from other people's faces into the probe, so a search would compare the gallery
with invented features (see docs/enhancement.md).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from retroface.core.errors import InvalidInputError
from retroface.vision.types import ImageArray

#: At most this many steps in one enhancement (a chain of versions can go further).
MAX_STEPS = 20
#: The smallest side a step may leave: what image decoding accepts (smaller is not a face).
MIN_SIDE = 8
#: PNG compression level of derived images: part of what makes the bytes reproducible.
PNG_COMPRESS_LEVEL = 6
#: Where rotation uncovers canvas it is mid-grey: it neither hides nor invents a face (as the
#: transparent parts of an upload, see media.images).
FILL = (128, 128, 128)

_INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


@dataclass(frozen=True)
class Param:
    """One parameter of an operation: its kind, range and default (None: required)."""

    kind: str  # "number", "box", "choice"
    low: float = 0.0
    high: float = 0.0
    default: Any = None
    choices: tuple[str, ...] = ()
    integer: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Op:
    name: str
    params: dict[str, Param]
    fn: Callable[[ImageArray, Mapping[str, Any]], ImageArray]
    doc: str


@dataclass(frozen=True)
class Step:
    """A parsed step: the operation and every one of its parameters (defaults filled in)."""

    op: str
    params: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params},
        }

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


# --------------------------------------------------------------------------------- operations


def crop(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Keep the box ``[x0, y0, x1, y1]`` (pixels, x1/y1 exclusive), which must lie inside."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = p["box"]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InvalidInputError(
            f"crop box {[x0, y0, x1, y1]} is not inside the {w}x{h} image "
            f"(need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h})"
        )
    if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
        raise InvalidInputError(f"crop box {[x0, y0, x1, y1]} is smaller than {MIN_SIDE} px")
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def rotate(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Rotate by ``angle`` degrees counter-clockwise (negative: clockwise), growing the canvas
    so nothing is cut off; multiples of 90 are exact (no interpolation)."""
    angle = float(p["angle"])
    quarter = angle / 90.0
    if quarter == round(quarter):
        return np.ascontiguousarray(np.rot90(image, k=round(quarter) % 4))
    h, w = image.shape[:2]
    rad = math.radians(angle)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    nw, nh = math.ceil(w * cos + h * sin), math.ceil(w * sin + h * cos)
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    m[0, 2] += (nw - w) / 2.0
    m[1, 2] += (nh - h) / 2.0
    out = cv2.warpAffine(
        image,
        m,
        (nw, nh),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=FILL,
    )
    return np.ascontiguousarray(out)


def _lut(image: ImageArray, table: np.ndarray) -> ImageArray:
    lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(lut[image])


_LEVELS = np.arange(256, dtype=np.float64)


def brightness(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Add ``offset`` to every channel (clipped to 0-255)."""
    return _lut(image, _LEVELS + float(p["offset"]))


def contrast(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Stretch (``factor`` > 1) or flatten (< 1) around mid-grey: 128 + factor (v - 128)."""
    return _lut(image, 128.0 + float(p["factor"]) * (_LEVELS - 128.0))


def gamma(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """255 (v / 255) ^ (1 / gamma): ``gamma`` > 1 lifts the shadows, < 1 darkens them."""
    return _lut(image, 255.0 * (_LEVELS / 255.0) ** (1.0 / float(p["gamma"])))


def equalize(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Local contrast (CLAHE, 8x8 tiles) on the lightness channel only, so colours keep."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=float(p["clip_limit"]), tileGridSize=(8, 8))
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    return np.ascontiguousarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


def denoise(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Non-local means (OpenCV ``fastNlMeansDenoisingColored``, 7 px patches searched within
    21 px, filter strength ``strength`` for lightness and colour) or a bilateral filter (5 px
    neighbourhood, colour sigma 4 x ``strength``, space sigma 3)."""
    s = float(p["strength"])
    if p["method"] == "nlmeans":
        out = cv2.fastNlMeansDenoisingColored(image, None, s, s, 7, 21)
    else:
        out = cv2.bilateralFilter(image, 5, 4.0 * s, 3.0)
    return np.ascontiguousarray(out)


def sharpen(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Unsharp mask: v + amount (v - gaussian(v, radius)), clipped to 0-255."""
    amount, radius = float(p["amount"]), float(p["radius"])
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=radius, sigmaY=radius)
    return np.ascontiguousarray(cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0.0))


def upscale(image: ImageArray, p: Mapping[str, Any]) -> ImageArray:
    """Enlarge by ``factor`` (each side rounded) with cubic or Lanczos (8x8) interpolation.

    It adds pixels, not detail: it helps only where the detector or the aligner would
    otherwise see too few pixels (a small native-resolution still), see docs/enhancement.md.
    """
    h, w = image.shape[:2]
    f = float(p["factor"])
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(image, size, interpolation=_INTERPOLATION[p["interpolation"]])
    return np.ascontiguousarray(out)


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "crop",
            {"box": Param("box", doc="[x0, y0, x1, y1] in pixels of the input, x1/y1 exclusive")},
            crop,
            "keep a region",
        ),
        Op(
            "rotate",
            {"angle": Param("number", -180.0, 180.0, doc="degrees, counter-clockwise")},
            rotate,
            "rotate or deskew (canvas grows, uncovered parts mid-grey)",
        ),
        Op(
            "brightness",
            {"offset": Param("number", -128.0, 128.0, doc="added to every channel")},
            brightness,
            "lighten or darken",
        ),
        Op(
            "contrast",
            {"factor": Param("number", 0.2, 4.0, doc="around mid-grey; 1 = unchanged")},
            contrast,
            "stretch or flatten contrast",
        ),
        Op(
            "gamma",
            {"gamma": Param("number", 0.2, 5.0, doc="> 1 lifts shadows; 1 = unchanged")},
            gamma,
            "gamma correction",
        ),
        Op(
            "equalize",
            {"clip_limit": Param("number", 0.5, 10.0, default=2.0, doc="CLAHE clip limit")},
            equalize,
            "local contrast equalisation (CLAHE) of lightness",
        ),
        Op(
            "denoise",
            {
                "method": Param("choice", default="nlmeans", choices=("nlmeans", "bilateral")),
                "strength": Param("number", 1.0, 30.0, default=7.0, doc="filter strength"),
            },
            denoise,
            "reduce noise and compression artefacts",
        ),
        Op(
            "sharpen",
            {
                "amount": Param("number", 0.0, 5.0, default=1.0, doc="unsharp-mask amount"),
                "radius": Param("number", 0.3, 10.0, default=1.0, doc="gaussian sigma, px"),
            },
            sharpen,
            "unsharp mask",
        ),
        Op(
            "upscale",
            {
                "factor": Param("number", 1.0, 8.0, doc="enlargement of each side"),
                "interpolation": Param("choice", default="cubic", choices=("cubic", "lanczos")),
            },
            upscale,
            "enlarge",
        ),
    )
}


# --------------------------------------------------------------------------------- parsing


def _number(op: str, name: str, spec: Param, value: Any) -> float | int:
    # bool is an int in Python; a JSON true is not a number a user meant
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{op}: {name} must be a number")
    if not math.isfinite(value) or not spec.low <= value <= spec.high:
        raise InvalidInputError(f"{op}: {name} must be between {spec.low:g} and {spec.high:g}")
    return int(value) if spec.integer else float(value)


def _box(op: str, name: str, value: Any) -> tuple[int, int, int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise InvalidInputError(f"{op}: {name} must be four integers [x0, y0, x1, y1]")
    if any(not 0 <= v <= 1_000_000 for v in value):
        raise InvalidInputError(f"{op}: {name} values must be between 0 and 1000000 pixels")
    x0, y0, x1, y1 = (int(v) for v in value)
    return x0, y0, x1, y1


def parse_step(raw: Any, position: int = 1) -> Step:
    """One step from its JSON form (``{"op": "upscale", "factor": 2}``), fully specified."""
    where = f"step {position}"
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"{where} must be an object with an 'op'")
    name = raw.get("op")
    if not isinstance(name, str) or name not in OPS:
        known = ", ".join(OPS)
        shown = name if isinstance(name, str) and len(name) <= 40 else "?"
        raise InvalidInputError(f"{where}: unknown operation {shown!r}; known: {known}")
    op = OPS[name]
    unknown = sorted(str(k)[:40] for k in raw if k != "op" and k not in op.params)
    if unknown:
        raise InvalidInputError(
            f"{where} ({name}): unknown parameter(s) {', '.join(unknown)}; "
            f"{name} takes {', '.join(op.params)}"
        )
    params: list[tuple[str, Any]] = []
    for pname, spec in op.params.items():
        value = raw.get(pname, spec.default)
        if value is None:
            raise InvalidInputError(f"{where} ({name}): {pname} is required")
        if spec.kind == "number":
            params.append((pname, _number(name, pname, spec, value)))
        elif spec.kind == "box":
            params.append((pname, _box(name, pname, value)))
        else:
            if not isinstance(value, str) or value not in spec.choices:
                raise InvalidInputError(
                    f"{where} ({name}): {pname} must be one of {', '.join(spec.choices)}"
                )
            params.append((pname, value))
    return Step(name, tuple(params))


def parse_steps(raw: Any) -> list[Step]:
    """Steps from their JSON form (a list of objects), every one checked before any runs."""
    if not isinstance(raw, list | tuple):
        raise InvalidInputError("steps must be a list of objects, e.g. [{'op': 'upscale', ...}]")
    if not raw:
        raise InvalidInputError("no steps given: an enhancement needs at least one step")
    if len(raw) > MAX_STEPS:
        raise InvalidInputError(f"at most {MAX_STEPS} steps in one enhancement")
    return [parse_step(s, i) for i, s in enumerate(raw, start=1)]


# --------------------------------------------------------------------------------- applying


def apply_step(image: ImageArray, step: Step, max_pixels: int) -> ImageArray:
    """One step; refuses a result larger than ``max_pixels`` or smaller than 8 px a side."""
    if step.op == "upscale" or step.op == "rotate":
        h, w = image.shape[:2]
        k = step.kwargs
        if step.op == "upscale":
            grow = float(k["factor"]) ** 2
        else:
            rad = math.radians(float(k["angle"]))
            c, s = abs(math.cos(rad)), abs(math.sin(rad))
            grow = (c + s * h / w) * (c + s * w / h)
        if w * h * grow > max_pixels:
            raise InvalidInputError(
                f"{step.op} would make the {w}x{h} image larger than {max_pixels:,} pixels"
            )
    out = OPS[step.op].fn(np.ascontiguousarray(image, dtype=np.uint8), step.kwargs)
    if out.ndim != 3 or out.shape[2] != 3 or min(out.shape[:2]) < MIN_SIDE:
        raise InvalidInputError(f"{step.op} would leave an image smaller than {MIN_SIDE} px")
    return out


def apply_steps(
    image: ImageArray, steps: Sequence[Step], max_pixels: int = 50_000_000
) -> ImageArray:
    """Apply ``steps`` in order to an RGB ``uint8`` image; the input is never modified."""
    out = image
    for step in steps:
        out = apply_step(out, step, max_pixels)
    return out


def encode_png(image: ImageArray) -> bytes:
    """Lossless, metadata-free PNG: the same pixels always give the same bytes here."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
    )
    return buf.getvalue()


def pixels_sha256(image: ImageArray) -> str:
    """sha256 of the decoded pixels and their shape: independent of the file encoding."""
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}x{image.shape[2]}:".encode())
    h.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """The libraries whose code decides a derived image's bytes."""
    import PIL

    return {"opencv": cv2.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def describe_ops() -> list[dict[str, Any]]:
    """The operations and their parameters, for help texts and the docs."""
    out = []
    for op in OPS.values():
        params = {}
        for name, p in op.params.items():
            d: dict[str, Any] = {"kind": p.kind, "required": p.default is None}
            if p.kind == "number":
                d |= {"min": p.low, "max": p.high}
            if p.choices:
                d["choices"] = list(p.choices)
            if p.default is not None:
                d["default"] = p.default
            params[name] = d
        out.append({"op": op.name, "what": op.doc, "params": params})
    return out
