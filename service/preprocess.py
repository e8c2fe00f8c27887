"""Image decoding and resizing shared by training (feature extraction) and serving.

One function, `load_image`, turns file bytes into the uint8 HxWx3 array the ONNX graph takes.
Training and the service call the same code with the same `Preprocessing`, so their inputs match
bit for bit.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError
from service.manifest import Preprocessing

# Pillow's own bomb check would raise or warn at a global limit; we enforce our own per call.
Image.MAX_IMAGE_PIXELS = None

IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger is almost surely a decompression bomb


def load_image(
    source: bytes | Path | str,
    spec: Preprocessing,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` and return a (size, size, 3) uint8 RGB array.

    Raises InvalidImageError (not an image, corrupt, truncated) or ImageTooLargeError.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image")
    if isinstance(source, bytes) and not source:
        raise InvalidImageError(f"{label}: empty file")
    try:
        with _open(source) as img:
            return _prepare(img, spec, label, max_pixels)
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{label}: not a readable image ({_reason(exc)})") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - MAX_IMAGE_PIXELS is None
        raise ImageTooLargeError(f"{label}: {exc}") from exc


def _open(source: bytes | Path | str) -> Image.Image:
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _prepare(img: Image.Image, spec: Preprocessing, label: str, max_pixels: int) -> np.ndarray:
    if img.format not in IMAGE_FORMATS:
        raise InvalidImageError(
            f"{label}: format {img.format} is not supported (use JPEG, PNG, WebP, BMP, TIFF or GIF)"
        )
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,}; downscale it first"
        )
    size = (spec.image_size, spec.image_size)
    if spec.jpeg_draft and img.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 while staying >= the target size.
        img.draft("RGB", size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/metadata oddities are not the user's problem
        img.load()
        if spec.exif_transpose:
            img = ImageOps.exif_transpose(img)
    img = _to_rgb(img, spec.alpha_background)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img  # converting an RGB image again costs milliseconds for nothing
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the real range to 0..255 instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text:
        return "the file is truncated"
    if "cannot identify image file" in text:
        return "unknown or corrupt image data"
    return text.split("\n")[0][:200]


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES
