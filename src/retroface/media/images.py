"""Image decoding that survives what investigators actually hand over.

Witness photos, screenshots and exported CCTV stills arrive as every format and pixel mode there is,
rotated by EXIF, sometimes truncated or not images at all. Everything here decodes to an upright
8-bit RGB array or raises :class:`ImageLoadError` naming the file and the reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# re-exported: callers named them here before the CLI needed them without NumPy
from retroface.media.formats import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from retroface.media.formats import is_image_path as is_image_path
from retroface.vision.types import ImageArray

#: Default pixel limit: 50 MP is well above any CCTV or phone image and far below a bomb.
DEFAULT_MAX_PIXELS = 50_000_000
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")


class ImageLoadError(ValueError):
    """An input could not be turned into an image; ``str()`` is a complete user-facing message."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips high-bit data to 255; rescale the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        # Transparent areas become mid-grey, not black, so they neither hide nor invent faces.
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(
    data: bytes | Path | str,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageArray:
    """Decode a file path or bytes into an upright RGB ``uint8`` array (H, W, 3)."""
    if isinstance(data, bytes):
        source = name or "<uploaded image>"
        stream: io.BytesIO | Path = io.BytesIO(data)
        if not data:
            raise ImageLoadError(source, "the file is empty")
    else:
        path = Path(data)
        source = name or str(path)
        if not path.exists():
            raise ImageLoadError(source, "no such file")
        if path.is_dir():
            raise ImageLoadError(source, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageLoadError(source, "the file is empty")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        source,
                        f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                        "(possible decompression bomb; "
                        "raise RETROFACE_MAX_IMAGE_PIXELS if genuine)",
                    )
                if img.format not in SUPPORTED_FORMATS:
                    raise ImageLoadError(
                        source,
                        f"unsupported image format {img.format}; "
                        f"supported: {', '.join(SUPPORTED_FORMATS)}",
                    )
                img.seek(0)  # first frame of an animated GIF/TIFF
                img.load()
                upright = ImageOps.exif_transpose(img) or img
                rgb = _to_rgb(upright)
                arr = np.asarray(rgb, dtype=np.uint8)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not a recognised image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(source, f"refused as a possible decompression bomb ({exc})") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower():
            raise ImageLoadError(source, "the image file is truncated or corrupt") from None
        raise ImageLoadError(source, f"the image could not be decoded ({msg})") from None
    except (ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise ImageLoadError(source, f"the image could not be decoded ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ImageLoadError(source, f"image is too small or malformed (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def upright_shape(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`decode_image` turns it upright, from its header
    alone (EXIF orientations 5-8 swap the sides): no pixels are decoded."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    return h, w


def load_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageArray:
    """Read an image file from disk; see :func:`decode_image`."""
    return decode_image(Path(path), max_pixels=max_pixels)
