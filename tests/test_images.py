"""Image decoding: every format and pixel mode users hand over, and every way a file can be bad."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retroface.media.images import ImageLoadError, decode_image, load_image


@pytest.fixture(scope="module")
def face_rgb(data_dir: Path) -> Image.Image:
    return Image.open(data_dir / "lfw/AJ_Cook/AJ_Cook_0001.jpg").convert("RGB")


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(face_rgb: Image.Image, fmt: str) -> None:
    arr = decode_image(_encode(face_rgb, fmt), name=f"x.{fmt.lower()}")
    assert arr.shape == (250, 250, 3) and arr.dtype == np.uint8
    # lossy formats and GIF's palette change pixels a little, never the picture
    assert np.abs(arr.astype(int) - np.asarray(face_rgb, int)).mean() < 12


def test_gif_first_frame(face_rgb: Image.Image) -> None:
    black = Image.new("RGB", face_rgb.size)
    buf = io.BytesIO()
    face_rgb.save(buf, format="GIF", save_all=True, append_images=[black])
    arr = decode_image(buf.getvalue())
    assert arr.mean() > 40  # the face frame, not the black second frame


def test_exif_orientation_is_applied(face_rgb: Image.Image) -> None:
    wide = face_rgb.resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    arr = decode_image(_encode(wide, "JPEG", exif=exif.tobytes()))
    assert arr.shape[:2] == (300, 200)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "I;16"])
def test_pixel_modes(face_rgb: Image.Image, mode: str) -> None:
    if mode == "I;16":
        grey = np.asarray(face_rgb.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)
        data = _encode(img, "PNG")
    else:
        data = _encode(face_rgb.convert(mode), "TIFF" if mode == "CMYK" else "PNG")
    arr = decode_image(data)
    assert arr.shape == (250, 250, 3)
    assert 30 < arr.mean() < 220  # not clipped to white or black


def test_16_bit_keeps_contrast(face_rgb: Image.Image) -> None:
    grey = np.asarray(face_rgb.convert("L"), dtype=np.uint16) * 257
    arr = decode_image(_encode(Image.fromarray(grey), "PNG"))
    assert arr.std() > 20


def test_truncated_file(face_rgb: Image.Image) -> None:
    data = _encode(face_rgb, "JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as exc:
        decode_image(data[: len(data) // 2], name="cut.jpg")
    assert exc.value.source == "cut.jpg"


def test_corrupt_png(face_rgb: Image.Image) -> None:
    data = bytearray(_encode(face_rgb, "PNG"))
    data[200:400] = b"\x00" * 200
    with pytest.raises(ImageLoadError, match=r"could not be decoded|truncated or corrupt"):
        decode_image(bytes(data), name="bad.png")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg: not a recognised image file"):
        load_image(p)


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_refused() -> None:
    big = Image.new("L", (12000, 12000))
    data = _encode(big, "PNG", optimize=True)
    assert len(data) < 1_000_000  # small file, huge image
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_image(data, name="bomb.png", max_pixels=50_000_000)
    with pytest.raises(ImageLoadError, match="above the limit"):
        decode_image(_encode(Image.new("RGB", (400, 400)), "PNG"), max_pixels=100_000)


def test_unsupported_format() -> None:
    img = Image.new("RGB", (64, 64))
    with pytest.raises(ImageLoadError, match="unsupported image format"):
        decode_image(_encode(img, "PPM"), name="x.ppm")


def test_tiny_image_refused() -> None:
    with pytest.raises(ImageLoadError, match="too small"):
        decode_image(_encode(Image.new("RGB", (4, 4)), "PNG"))
