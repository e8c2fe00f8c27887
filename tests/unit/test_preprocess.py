"""service.preprocess.load_image: formats, EXIF, colour modes, JPEG draft, errors, bomb guard."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLargeError, InvalidImageError
from service.manifest import Preprocessing
from service.preprocess import load_image

SIZE = 16
SPEC = Preprocessing(image_size=SIZE)
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def _halves(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2 :] = BLUE
    return Image.fromarray(arr)


def _close(pixel: np.ndarray, color: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(color)) <= tol))


# --- formats and sources -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_each_supported_format_decodes_to_a_square_uint8_rgb_array(fmt: str) -> None:
    out = load_image(_encode(_solid(GREEN), fmt), SPEC)
    assert out.shape == (SIZE, SIZE, 3)
    assert out.dtype == np.uint8
    assert _close(out[SIZE // 2, SIZE // 2], GREEN, tol=20)


def test_a_path_and_its_bytes_give_the_same_array(tmp_path: Path) -> None:
    data = _encode(_halves(), "PNG")
    path = tmp_path / "halves.png"
    path.write_bytes(data)
    from_path = load_image(path, SPEC)
    assert from_path.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(from_path, load_image(data, SPEC))
    np.testing.assert_array_equal(load_image(str(path), SPEC), from_path)


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [_solid(RED), _solid(BLUE)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = load_image(data, SPEC)
    assert _close(out.reshape(-1, 3).mean(axis=0), RED, tol=2)


# --- EXIF orientation ----------------------------------------------------------------------------


def _with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_turns_the_left_half_to_the_top() -> None:
    out = load_image(_with_orientation(_halves(), 6), SPEC)  # rotate 90 degrees clockwise to display
    assert _close(out[2, SIZE // 2], RED, tol=40)
    assert _close(out[-3, SIZE // 2], BLUE, tol=40)


def test_exif_orientation_8_turns_the_left_half_to_the_bottom() -> None:
    out = load_image(_with_orientation(_halves(), 8), SPEC)  # rotate 90 degrees anticlockwise
    assert _close(out[2, SIZE // 2], BLUE, tol=40)
    assert _close(out[-3, SIZE // 2], RED, tol=40)


def test_exif_transpose_off_keeps_the_stored_orientation() -> None:
    out = load_image(_with_orientation(_halves(), 6), Preprocessing(image_size=SIZE, exif_transpose=False))
    assert _close(out[SIZE // 2, 2], RED, tol=40)
    assert _close(out[SIZE // 2, -3], BLUE, tol=40)


# --- colour modes --------------------------------------------------------------------------------


def test_greyscale_l_becomes_three_equal_channels() -> None:
    out = load_image(_encode(Image.new("L", (20, 20), 77), "PNG"), SPEC)
    assert np.all(out == 77)


def test_palette_p_becomes_its_rgb_colour() -> None:
    img = _solid((200, 30, 60)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = load_image(_encode(img, "PNG"), SPEC)
    assert np.all(out == (200, 30, 60))


def test_palette_transparency_becomes_the_alpha_background() -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(0, (0, 0, 10, 20))  # left half uses index 0, declared transparent below
    data = _encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    spec = Preprocessing(image_size=20, alpha_background=(10, 200, 30))
    out = load_image(data, spec)
    assert np.all(out[:, :9] == (10, 200, 30))
    assert np.all(out[:, 11:] == RED)


def test_transparent_rgba_pixels_become_white() -> None:
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[:, :10] = (0, 0, 255, 0)  # transparent blue: the colour must not leak through
    arr[:, 10:] = (255, 0, 0, 255)
    out = load_image(_encode(Image.fromarray(arr, "RGBA"), "PNG"), Preprocessing(image_size=20))
    assert np.all(out[:, :9] == (255, 255, 255))
    assert np.all(out[:, 11:] == RED)


def test_transparent_la_pixels_become_white() -> None:
    arr = np.zeros((20, 20, 2), np.uint8)
    arr[:, :10] = (0, 0)
    arr[:, 10:] = (50, 255)
    out = load_image(_encode(Image.fromarray(arr, "LA"), "PNG"), Preprocessing(image_size=20))
    assert np.all(out[:, :9] == 255)
    assert np.all(out[:, 11:] == 50)


def test_cmyk_is_converted_to_rgb() -> None:
    data = _encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "TIFF")  # pure red in CMYK
    out = load_image(data, SPEC)
    assert np.all(out == RED)


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32768, 128), (0, 0)])
def test_16_bit_greyscale_is_scaled_not_clipped(value: int, expected: int) -> None:
    img = Image.fromarray(np.full((20, 20), value, np.uint16))
    data = _encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = load_image(data, SPEC)
    assert np.all(np.abs(out.astype(int) - expected) <= 1)


# --- JPEG draft mode -----------------------------------------------------------------------------


def _photo_like_jpeg(side: int = 256) -> bytes:
    yy, xx = np.mgrid[0:side, 0:side] / side
    arr = np.stack([xx * 255, yy * 255, (1 - xx) * yy * 255], axis=-1).astype(np.uint8)
    return _encode(Image.fromarray(arr), "JPEG", quality=95)


def test_jpeg_draft_is_close_to_a_full_decode() -> None:
    data = _photo_like_jpeg()
    draft = load_image(data, Preprocessing(image_size=32, jpeg_draft=True))
    full = load_image(data, Preprocessing(image_size=32, jpeg_draft=False))
    assert draft.shape == full.shape == (32, 32, 3)
    assert float(np.abs(draft.astype(float) - full.astype(float)).mean()) < 3.0


def test_jpeg_draft_gives_identical_arrays_from_bytes_and_path(tmp_path: Path) -> None:
    data = _photo_like_jpeg()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    spec = Preprocessing(image_size=32, jpeg_draft=True)
    np.testing.assert_array_equal(load_image(data, spec), load_image(path, spec))


# --- errors --------------------------------------------------------------------------------------


def _invalid_inputs(tmp_path: Path) -> dict[str, bytes | Path]:
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    jpeg = _encode(_halves(256, 256), "JPEG")
    return {
        "empty bytes": b"",
        "random bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "text file": text,
        "ico": _encode(_solid(RED, (32, 32)), "ICO"),
        "pcx": _encode(_solid(RED, (32, 32)), "PCX"),
    }


@pytest.mark.parametrize("case", ["empty bytes", "random bytes", "truncated jpeg", "text file", "ico", "pcx"])
def test_unreadable_input_raises_invalid_image_error_naming_the_file(tmp_path: Path, case: str) -> None:
    source = _invalid_inputs(tmp_path)[case]
    with pytest.raises(InvalidImageError, match=r"^upload-7\.jpg: ") as info:
        load_image(source, SPEC, name="upload-7.jpg")
    assert not isinstance(info.value, ImageTooLargeError)
    assert "Traceback" not in str(info.value)


def test_truncated_jpeg_message_says_truncated() -> None:
    jpeg = _encode(_halves(256, 256), "JPEG")
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(jpeg[: len(jpeg) // 2], SPEC, name="cut.jpg")


def test_unsupported_format_message_names_the_format() -> None:
    with pytest.raises(InvalidImageError, match="format ICO is not supported"):
        load_image(_encode(_solid(RED, (32, 32)), "ICO"), SPEC, name="favicon.ico")


def test_path_without_name_uses_the_path_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidImageError, match="notes.txt"):
        load_image(path, SPEC)


# --- size limit / decompression bomb ---------------------------------------------------------------


def test_image_over_max_pixels_raises_image_too_large() -> None:
    data = _encode(_solid(RED, (100, 100)), "PNG")
    with pytest.raises(
        ImageTooLargeError, match=r"big\.png: 100x100 = 10,000 pixels is over the limit of 100"
    ):
        load_image(data, SPEC, name="big.png", max_pixels=100)
    assert load_image(data, SPEC, max_pixels=10_000).shape == (SIZE, SIZE, 3)  # the limit is inclusive


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR is patched (with a valid CRC) to claim width x height."""
    data = bytearray(_encode(_solid(RED, (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_bomb_is_rejected_from_the_header_before_decoding() -> None:
    bomb = _png_claiming(50_000, 50_000)
    assert Image.open(io.BytesIO(bomb)).size == (50_000, 50_000)
    # Decoding would fail as a truncated file (plain InvalidImageError); the size check must come first.
    with pytest.raises(ImageTooLargeError, match="50000x50000"):
        load_image(bomb, SPEC, name="bomb.png")
