"""Image decoding and resizing shared by training (feature extraction) and serving.

One function, `load_image`, turns file bytes into the uint8 HxWx3 array the ONNX graph takes;
`thumbnail_jpeg` decodes the same way for the thumbnails people look at.
Training and the service call the same code with the same `Preprocessing`, so their inputs match
bit for bit.

The bytes come from anyone who can reach the service, so decoding is bounded: only the formats in
`OPEN_FORMATS` are parsed at all, the header's size is checked against `max_pixels` and
`max_bytes` before any pixel is decoded, conversions add a few bytes a pixel at most (no float64
copies of the whole image), and every failure is an `InvalidImageError` naming the file.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError
from service.manifest import Preprocessing

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Pillow's own bomb check would raise or warn at a global limit; we enforce our own per call.
Image.MAX_IMAGE_PIXELS = None

# The Pillow formats matching IMAGE_SUFFIXES. Image.open tries only OPEN_FORMATS, so no other
# plugin's header parser sees the bytes; JPEG's opener gives MPO for a multi-picture JPEG.
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_FORMATS = frozenset({*OPEN_FORMATS, "MPO"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger is almost surely a decompression bomb
BYTES_PER_PIXEL = 4  # max_bytes defaults to max_pixels x this: an 8-bit RGB(A) image at the limit
_HIGH_DEPTH = ("I", "F")  # plus every "I;16*" mode: 16/32-bit greyscale and float
_STRIP_PIXELS = 1 << 20  # high-depth conversion works in strips of ~this many pixels (~20 MB of temps)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_image(
    source: bytes | bytearray | memoryview | Path | str,
    spec: Preprocessing,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Decode `source` and return a (size, size, 3) uint8 RGB array.

    `max_pixels` bounds width x height; `max_bytes` (default max_pixels x BYTES_PER_PIXEL) bounds
    the decoded image as Pillow stores it (`decoded_bytes`). Both are checked from the header,
    before any pixel is decoded. On top of the decoded image a call needs, per pixel: ~0 bytes for
    L, 1 for 16/32-bit and float (the 8-bit copy), 4 for RGB conversions (P, CMYK, ...), 4 (RGBA,
    LA) or 8 (P with transparency) for the background canvas; at the default limits that is at
    most ~2.3 x max_bytes (~560 MiB at 64 Mpx). Measured for a 64-Mpx 16-bit PNG: ~205 MiB, was
    1.7 GiB (tests/unit/test_preprocess_memory.py).

    Raises InvalidImageError (not an image, not an allowed format, corrupt, truncated) or
    ImageTooLargeError. MemoryError is left alone: it is the server's state, not the file's fault.
    """
    label = name or (str(source) if isinstance(source, Path | str) else "image")
    limit = max_pixels * BYTES_PER_PIXEL if max_bytes is None else max_bytes
    return _decode(source, label, lambda img: _prepare(img, spec, label, max_pixels, limit))


def thumbnail_jpeg(
    source: bytes | bytearray | memoryview | Path | str,
    *,
    size: int,
    quality: int,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> bytes:
    """A JPEG of the image as `load_image` sees it (EXIF orientation, high-depth scaling, alpha on
    `background`), at most `size` px on its long side with its aspect kept: the thumbnails training
    stores with a model and the studio shows. Same guards and errors as `load_image`."""
    label = name or (str(source) if isinstance(source, Path | str) else "image")

    def make(img: Image.Image) -> bytes:
        _check(img, label, max_pixels, max_pixels * BYTES_PER_PIXEL)
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))
        img = _load_upright(img, label, exif_transpose=True)
        width, height = img.size
        scale = min(1.0, size / max(width, height, 1))
        fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
        out = io.BytesIO()
        _to_rgb(img, background, fitted).save(out, format="JPEG", quality=quality)
        return out.getvalue()

    return _decode(source, label, make)


def _decode(
    source: bytes | bytearray | memoryview | Path | str, label: str, use: Callable[[Image.Image], T]
) -> T:
    """Open `source` (allowed formats only) and `use` it; every decoding failure an InvalidImageError."""
    if not isinstance(source, Path | str) and not source:
        raise InvalidImageError(f"{label}: empty file")
    try:
        with _open(source) as img:
            return use(img)
    except (InvalidImageError, MemoryError):
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{label}: not a readable image (unknown format or corrupt data; "
            "use JPEG, PNG, WebP, BMP, TIFF or GIF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{label}: not a readable image ({_reason(exc)})") from exc
    except Exception as exc:
        # zlib.error, struct.error, RecursionError, IndexError, ...: a plugin tripping over hostile
        # bytes. The client sent a broken file; a 500 would blame the server.
        logger.debug("%s: decoding raised %r", label, exc, exc_info=True)
        raise InvalidImageError(f"{label}: not a readable image ({_reason(exc)})") from exc


def decoded_bytes(img: Image.Image) -> int:
    """Bytes Pillow holds for `img` decoded: width x height x bytes per pixel of its mode."""
    width, height = img.size
    if img.mode in ("1", "L", "P"):
        per_pixel = 1
    elif img.mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4  # Pillow stores every other mode in 32 bits a pixel
    return width * height * per_pixel


def _open(source: bytes | bytearray | memoryview | Path | str) -> Image.Image:
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    return Image.open(fp, formats=OPEN_FORMATS)


def _check(img: Image.Image, label: str, max_pixels: int, max_bytes: int) -> None:
    """The format and the size from the header, before any pixel is decoded."""
    if img.format not in IMAGE_FORMATS:  # only if a plugin reports another name than it registered
        raise InvalidImageError(
            f"{label}: format {img.format} is not supported (use JPEG, PNG, WebP, BMP, TIFF or GIF)"
        )
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,}; downscale it first"
        )
    if decoded_bytes(img) > max_bytes:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} in mode {img.mode} takes {decoded_bytes(img):,} bytes decoded, "
            f"over the limit of {max_bytes:,}; downscale it or save it with 8 bits per channel"
        )


def _prepare(
    img: Image.Image, spec: Preprocessing, label: str, max_pixels: int, max_bytes: int
) -> np.ndarray:
    _check(img, label, max_pixels, max_bytes)
    size = (spec.image_size, spec.image_size)
    if spec.jpeg_draft and img.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 while staying >= the target size.
        img.draft("RGB", size)
    img = _load_upright(img, label, exif_transpose=spec.exif_transpose)
    return np.asarray(_to_rgb(img, spec.alpha_background, size), dtype=np.uint8)


def _load_upright(img: Image.Image, label: str, *, exif_transpose: bool) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/metadata oddities are not the user's problem
        img.load()
        return _exif_transpose(img, label) if exif_transpose else img


def _exif_transpose(img: Image.Image, label: str) -> Image.Image:
    """`ImageOps.exif_transpose` for the pixels only.

    Pillow's version copies the whole image when there is nothing to turn and rewrites the EXIF
    block, which raises on many damaged ones; a broken orientation is decoded as stored.
    """
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # struct.error, SyntaxError, TypeError, ...: metadata, not pixels
        logger.debug("%s: EXIF unreadable, orientation ignored: %r", label, exc)
        return img
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return img
    turned = img.transpose(method)
    img.close()  # frees the stored orientation's pixels before the conversion allocates its own
    return turned


def _to_rgb(img: Image.Image, background: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """`img` as RGB at `size`. A single-band image is resized before it gets three equal channels:
    the same result as resizing the RGB image, at a quarter of the memory."""
    mode = img.mode
    if mode in _HIGH_DEPTH or mode.startswith("I;16"):
        img, mode = _high_depth_to_l(img), "L"
    if mode == "L":
        return _resize(img, size).convert("RGB")
    if mode == "RGB":
        return _resize(img, size)  # converting an RGB image again costs milliseconds for nothing
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Pillow pastes RGBA and LA into RGB as they are, and takes their alpha band as the mask.
        rgba = img if mode in ("RGBA", "LA") else img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba)
        return _resize(canvas, size)
    return _resize(img.convert("RGB"), size)  # 1, P, CMYK, YCbCr, LAB, HSV


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale or float -> 8-bit L, scaling the real range to 0..255 instead of clipping.

    16-bit images scale from 0..65535, 32-bit and float ones from 0..max (at least 1); negative and
    NaN values become 0. Computed in strips of rows so that no float64 copy of the whole image
    exists (that was 24 bytes a pixel: 1.6 GiB for a 130 kB 64-Mpx PNG); the result equals the
    whole-image float64 formula pixel for pixel.
    """
    width, height = img.size
    top = 65535.0 if img.mode.startswith("I;16") else _finite_max(img)
    scale = 255.0 / max(top, 1.0)
    grey = np.empty((height, width), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for y in range(0, height, rows):
        strip = np.asarray(img.crop((0, y, width, min(y + rows, height))), dtype=np.float64)
        if img.mode == "F":
            np.nan_to_num(strip, copy=False, nan=0.0, posinf=top, neginf=0.0)
        strip *= scale
        np.clip(strip, 0, 255, out=strip)
        grey[y : y + rows] = strip  # float -> uint8 truncates, as astype did
    return Image.fromarray(grey)


def _finite_max(img: Image.Image) -> float:
    """The largest finite value of an I or F image, without copying it whole."""
    top = float(img.getextrema()[1])
    if math.isfinite(top):
        return top
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    top = -math.inf
    for y in range(0, height, rows):
        strip = np.asarray(img.crop((0, y, width, min(y + rows, height))))
        finite = strip[np.isfinite(strip)]
        if finite.size:
            top = max(top, float(finite.max()))
    return top if math.isfinite(top) else 0.0


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text:
        return "the file is truncated"
    if "cannot identify image file" in text:
        return "unknown or corrupt image data"
    return text.split("\n")[0][:200]


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES
