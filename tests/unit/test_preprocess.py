"""service.preprocess.load_image: formats, EXIF, colour modes, JPEG draft, errors, bomb guard.

Peak memory on a 64-Mpx 16-bit image is measured in a subprocess: test_preprocess_memory.py.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from service import preprocess
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


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_corrupt_exif_block_decodes_in_the_stored_orientation() -> None:
    png = _encode(_halves(), "PNG")
    broken = png[:33] + _png_chunk(b"eXIf", b"\x00\x00\x00") + png[33:]  # after IHDR; Pillow 13's
    # ImageOps.exif_transpose raises SyntaxError on it, which used to refuse the image
    np.testing.assert_array_equal(load_image(broken, SPEC), load_image(png, SPEC))


@pytest.mark.parametrize("error", [struct.error("unpack requires a buffer"), TypeError("len()"), ValueError])
def test_an_exif_reader_error_is_logged_and_the_orientation_ignored(
    error: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Image.Image) -> Image.Exif:
        raise error

    monkeypatch.setattr(Image.Image, "getexif", broken)
    with caplog.at_level(logging.DEBUG, logger="service.preprocess"):
        out = load_image(_with_orientation(_halves(), 6), SPEC, name="odd.jpg")
    assert _close(out[SIZE // 2, 2], RED, tol=40)  # as stored: left half still red
    assert any("odd.jpg: EXIF unreadable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["6", (6, 6), 9, -1])
def test_an_orientation_of_the_wrong_type_or_range_is_ignored(
    value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image.Image, "getexif", lambda self: {0x0112: value})
    out = load_image(_encode(_halves(), "PNG"), SPEC)
    assert _close(out[SIZE // 2, 2], RED) and _close(out[SIZE // 2, -3], BLUE)


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


def _before_the_fix(data: bytes, size: int) -> np.ndarray:
    """The conversion load_image used to do: the whole image through float64, RGB, then resize."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
    grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(grey).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def _high_depth(kind: str, width: int = 50, height: int = 37) -> bytes:
    rng = np.random.default_rng(3)
    if kind == "I;16 PNG":
        return _encode(Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)), "PNG")
    if kind == "I;16 TIFF":
        return _encode(Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)), "TIFF")
    if kind == "I TIFF":
        arr = rng.integers(-5000, 3_000_000, (height, width), dtype=np.int32)
        return _encode(Image.fromarray(arr, "I"), "TIFF")
    arr = rng.normal(2.0, 3.0, (height, width)).astype(np.float32)  # "F TIFF", negatives included
    return _encode(Image.fromarray(arr, "F"), "TIFF")


@pytest.mark.parametrize("kind", ["I;16 PNG", "I;16 TIFF", "I TIFF", "F TIFF"])
def test_high_bit_depth_gives_the_same_8_bit_result_as_before(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _high_depth(kind)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I;16B", "I", "F")
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 120)  # several strips, a short last one
    spec = Preprocessing(image_size=24)
    out = load_image(data, spec)
    assert out.dtype == np.uint8 and out.shape == (24, 24, 3)
    assert int(np.abs(out.astype(int) - _before_the_fix(data, 24).astype(int)).max()) <= 1


def test_float_nan_and_infinity_become_black_and_the_top() -> None:
    arr = np.kron(np.array([[np.nan, 1.0], [np.inf, 2.0]], np.float32), np.ones((16, 16), np.float32))
    out = load_image(_encode(Image.fromarray(arr, "F"), "TIFF"), Preprocessing(image_size=32))
    assert np.all(out[:16, :16] == 0) and np.all(out[:16, 16:] == 127)  # 1 of 0..2
    assert np.all(out[16:, :16] == 255) and np.all(out[16:, 16:] == 255)  # inf counts as the top


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


def _psd(width: int = 8, height: int = 6) -> bytes:
    """A minimal valid Photoshop file (Pillow reads PSD but cannot write it): red, raw planes."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3) + struct.pack(">IIIH", 0, 0, 0, 0)
    return head + b"\xff" * (width * height) + bytes(2 * width * height)


OTHER_FORMATS = ["ICO", "PCX", "PPM", "TGA", "SGI", "QOI", "PSD"]  # valid images Pillow reads, not ours


def _other_format(fmt: str) -> bytes:
    data = _psd() if fmt == "PSD" else _encode(_solid(RED, (32, 32)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # a real image of that format
    return data


def _invalid_inputs(tmp_path: Path) -> dict[str, bytes | Path]:
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    jpeg = _encode(_halves(256, 256), "JPEG")
    png16 = _encode(Image.fromarray(np.arange(256 * 64, dtype=np.uint16).reshape(64, 256)), "PNG")
    tiff = _encode(_halves(256, 256), "TIFF")
    gif = _encode(_halves(256, 256), "GIF")
    return {
        "empty bytes": b"",
        "random bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated 16-bit png": png16[: len(png16) // 2],
        "truncated tiff": tiff[: len(tiff) // 2],
        "truncated gif": gif[: len(gif) // 2],
        "png signature then garbage": b"\x89PNG\r\n\x1a\n" + b"\xff" * 200,
        "text file": text,
        **{fmt.lower(): _other_format(fmt) for fmt in OTHER_FORMATS},
    }


INVALID = [
    "empty bytes",
    "random bytes",
    "truncated jpeg",
    "truncated 16-bit png",
    "truncated tiff",
    "truncated gif",
    "png signature then garbage",
    "text file",
    *(fmt.lower() for fmt in OTHER_FORMATS),
]


@pytest.mark.parametrize("case", INVALID)
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


def test_another_format_is_refused_naming_the_ones_we_read() -> None:
    with pytest.raises(InvalidImageError, match=r"^favicon\.ico: .*use JPEG, PNG, WebP, BMP, TIFF or GIF"):
        load_image(_encode(_solid(RED, (32, 32)), "ICO"), SPEC, name="favicon.ico")


def test_no_other_plugin_parses_the_bytes() -> None:
    """Pillow tries every registered plugin without `formats=`; ours must never see the bytes."""
    seen: list[bytes] = []

    def accept(prefix: bytes) -> bool:
        seen.append(prefix)
        return True

    def factory(fp: object, filename: object) -> ImageFile.ImageFile:
        raise AssertionError("a plugin outside the allow-list was asked to parse an upload")

    Image.register_open("MANYLABELTEST", factory, accept)
    try:
        with pytest.raises(InvalidImageError):
            load_image(b"MANYLABELTEST not any real format" * 4, SPEC)
    finally:
        Image.OPEN.pop("MANYLABELTEST", None)
        Image.ID.remove("MANYLABELTEST")
    assert seen == []


@pytest.mark.parametrize(
    "error",
    [zlib.error("invalid distance"), struct.error("bad char"), RecursionError(), IndexError(), KeyError(1)],
    ids=lambda e: type(e).__name__,
)
def test_any_exception_while_decoding_becomes_invalid_image_error(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(self: ImageFile.ImageFile) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(InvalidImageError, match=r"^odd\.png: not a readable image \(") as info:
        load_image(_encode(_solid(RED), "PNG"), SPEC, name="odd.png")
    assert not isinstance(info.value, ImageTooLargeError)


def test_an_exception_while_opening_becomes_invalid_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import PngImagePlugin

    def deep(self: ImageFile.ImageFile) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", deep)
    with pytest.raises(InvalidImageError, match=r"^deep\.png: not a readable image \(maximum recursion"):
        load_image(_encode(_solid(RED), "PNG"), SPEC, name="deep.png")


def test_memory_error_is_not_blamed_on_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(self: ImageFile.ImageFile) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(MemoryError):
        load_image(_encode(_solid(RED), "PNG"), SPEC)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on some damaged headers
def test_mutated_files_decode_or_raise_invalid_image_error() -> None:
    """A small seeded fuzz: a few bytes changed in each format's file; nothing else may escape."""
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = [
        _encode(base, "PNG", exif=exif.tobytes()),
        _encode(base, "JPEG", exif=exif.tobytes()),
        _encode(base, "GIF"),
        _encode(base, "BMP"),
        _encode(base, "WEBP"),
        _encode(base, "TIFF", compression="tiff_adobe_deflate", exif=exif.tobytes()),
        _encode(Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16)), "PNG"),
    ]
    outcomes = {"decoded": 0, "refused": 0}
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for at in rng.integers(0, len(data), rng.integers(1, 6)):
                data[at] = rng.integers(0, 256)
            try:
                load_image(bytes(data), SPEC, name="fuzz")
                outcomes["decoded"] += 1
            except InvalidImageError as exc:
                assert str(exc).startswith("fuzz: ")
                outcomes["refused"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0


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


def test_max_bytes_counts_the_bytes_a_pixel_of_the_decoded_mode() -> None:
    data = _encode(Image.fromarray(np.zeros((100, 100), np.uint16)), "PNG")  # I;16: 2 bytes a pixel
    with pytest.raises(
        ImageTooLargeError,
        match=r"deep\.png: 100x100 in mode I;16 takes 20,000 bytes decoded, over the limit of 19,999",
    ):
        load_image(data, SPEC, name="deep.png", max_bytes=19_999)
    assert load_image(data, SPEC, max_bytes=20_000).shape == (SIZE, SIZE, 3)


def test_max_bytes_defaults_to_4_bytes_a_pixel_of_max_pixels() -> None:
    rgb = _encode(_solid(RED, (100, 100)), "PNG")  # stored as 4 bytes a pixel by Pillow
    assert load_image(rgb, SPEC, max_pixels=10_000).shape == (SIZE, SIZE, 3)
    with pytest.raises(ImageTooLargeError, match="40,000 bytes decoded"):
        load_image(rgb, SPEC, max_pixels=10_000, max_bytes=39_999)


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


# --- thumbnail_jpeg: the thumbnails training stores and the studio shows ------------------------------


def _thumb(data: bytes, **kw: object) -> Image.Image:
    out = preprocess.thumbnail_jpeg(data, size=64, quality=90, **kw)
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def test_thumbnail_keeps_the_aspect_and_never_enlarges() -> None:
    assert _thumb(_encode(Image.new("RGB", (400, 100), (200, 10, 10)), "PNG")).size == (64, 16)
    assert _thumb(_encode(Image.new("RGB", (30, 20), (200, 10, 10)), "PNG")).size == (30, 20)


def test_thumbnail_turns_by_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    data = _encode(Image.new("RGB", (200, 100), (10, 200, 10)), "JPEG", exif=exif.tobytes())
    assert _thumb(data).size == (32, 64)


def test_thumbnail_scales_16_bit_and_puts_alpha_on_white() -> None:
    grey = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))  # half of 16-bit full scale
    assert abs(int(np.asarray(_thumb(_encode(grey, "PNG")))[..., 0].mean()) - 127) <= 2  # not clipped to 255
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.asarray(_thumb(_encode(clear, "PNG"))).min() >= 250  # transparent -> the white background


def test_thumbnail_has_load_images_guards() -> None:
    with pytest.raises(ImageTooLargeError):
        _thumb(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=100 * 99)
    with pytest.raises(InvalidImageError, match="not a readable image"):
        _thumb(b"not an image at all", name="junk.jpg")
