"""The feature pass skips and names any image it cannot decode, whatever Pillow raises, and goes on.

A stand-in ONNX "backbone" (mean colour per image) keeps this fast; the code under test is the real
`compute_features`, the function `fit()` calls.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from service.manifest import Preprocessing
from training import features
from training.data.sources import ImageFile
from training.features import _decode, compute_features

# Pillow warns while reading some of the broken EXIF below; the skip-or-decode outcome is what's tested.
pytestmark = pytest.mark.filterwarnings("ignore:Tag data larger than file")
SPEC = Preprocessing(image_size=16)
ORIENTATION, INTEROP_IFD, MODEL = 0x0112, 0xA005, 0x0110
BYTE, ASCII, SHORT, RATIONAL = 1, 2, 3, 5


def _mean_colour_onnx(path: Path) -> Path:
    """uint8 NHWC images -> float32 (N, 3) mean colour: a backbone in two nodes."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["features"], axes=[1, 2], keepdims=0),
        ],
        "mean_colour",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", 16, 16, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _with_exif(jpeg: bytes, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """`jpeg` with an APP1 EXIF segment holding one IFD of raw (tag, type, count, value) entries."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    tiff += b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries)
    tiff += struct.pack("<I", 0) + b"\x01" * 64  # next-IFD offset, then bytes for stray offsets to hit
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# Orientation 6 (rotate) is valid; the entry beside it is not. Rotating rewrites the EXIF, and Pillow
# 13 then raises struct.error (an IFD pointer of type BYTE) or AttributeError (a RATIONAL camera model).
ROTATE = (ORIENTATION, SHORT, 1, struct.pack("<HH", 6, 0))
BROKEN_EXIF = {
    "interop_pointer_as_byte.jpg": [ROTATE, (INTEROP_IFD, BYTE, 1, b"\0\0\0\0")],
    "model_as_rational.jpg": [ROTATE, (MODEL, RATIONAL, 1, b"\0\0\0\0")],
    "orientation_as_text.jpg": [(ORIENTATION, ASCII, 4, b"six\0")],
    "truncated_ifd.jpg": [ROTATE, (MODEL, ASCII, 4000, b"\x10\0\0\0")],
}


def _folder(tmp_path: Path, files: dict[str, bytes]) -> list[ImageFile]:
    root = tmp_path / "images"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [ImageFile(relpath=name, path=root / name) for name in files]


def _run(images: list[ImageFile], tmp_path: Path) -> features.FeatureSet:
    return compute_features(
        images,
        onnx_path=_mean_colour_onnx(tmp_path / "mean.onnx"),
        spec=SPEC,
        cache_root=tmp_path / "cache",
        batch_size=2,
        workers=2,
        device="cpu",
    )


@pytest.mark.parametrize("name", sorted(BROKEN_EXIF))
def test_decoding_an_image_with_broken_exif_never_raises(tmp_path: Path, name: str) -> None:
    (image,) = _folder(tmp_path, {name: _with_exif(_jpeg((200, 10, 10)), BROKEN_EXIF[name])})
    result = _decode(image, SPEC)
    # Decoded without its orientation, or skipped with a reason that names it; never an exception.
    if isinstance(result, str):
        assert result.startswith(f"{name}: ")
    else:
        assert result.shape == (16, 16, 3) and result.dtype == np.uint8


def test_feature_pass_names_broken_exif_images_and_computes_the_rest(tmp_path: Path) -> None:
    good = {f"good{i}.jpg": _jpeg((40 * i, 100, 200)) for i in range(5)}
    broken = {name: _with_exif(_jpeg((200, 10, 10)), entries) for name, entries in BROKEN_EXIF.items()}
    images = _folder(tmp_path, {**good, **broken, "garbage.jpg": b"not an image"})

    fs = _run(images, tmp_path)

    assert set(fs.names) | set(fs.failed) == {im.relpath for im in images}
    assert not set(fs.names) & set(fs.failed)
    assert set(good) <= set(fs.names) and "garbage.jpg" in fs.failed
    assert fs.names == [im.relpath for im in images if im.relpath in fs.names]  # input order kept
    for name, reason in fs.failed.items():
        assert reason.startswith(f"{name}: ")
    assert fs.features.shape == (len(fs.names), 3)
    red = fs.features[fs.names.index("good0.jpg")]
    assert red[0] < 10 and abs(red[2] - 200) < 10  # the features are the images', in order
    assert fs.computed == len(fs.names) and fs.cached == 0


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        TypeError("unhashable type: 'list'"),
        ValueError("tile cannot extend outside image"),
        zlib.error("Error -3 while decompressing data"),
        OSError("broken data stream"),
        RecursionError("maximum recursion depth exceeded"),
        Image.DecompressionBombError("too many pixels"),
        AttributeError("'IFDRational' object has no attribute 'encode'"),
        KeyError(274),
        IndexError("tuple index out of range"),
        MemoryError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_decoding_error_skips_and_names_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    images = _folder(tmp_path, {f"img{i}.jpg": _jpeg((10 * i, 50, 50)) for i in range(4)})
    real = features.load_image

    def load_image(path, spec, *, name):  # what Pillow raises from a real file's corrupt metadata
        if name == "img2.jpg":
            raise error
        return real(path, spec, name=name)

    monkeypatch.setattr(features, "load_image", load_image)
    fs = _run(images, tmp_path)

    assert list(fs.failed) == ["img2.jpg"] and fs.failed["img2.jpg"].startswith("img2.jpg: ")
    if not isinstance(error, OSError):  # (an OSError reads "cannot read file (...)")
        assert type(error).__name__ in fs.failed["img2.jpg"]  # the reason says what went wrong
    assert fs.names == ["img0.jpg", "img1.jpg", "img3.jpg"] and fs.features.shape == (3, 3)


def test_a_file_gone_before_hashing_is_named_not_fatal(tmp_path: Path) -> None:
    images = _folder(tmp_path, {"a.jpg": _jpeg((1, 2, 3)), "b.jpg": _jpeg((4, 5, 6))})
    images[0].path.unlink()  # vanished between the scan and the feature pass

    fs = _run(images, tmp_path)

    assert fs.names == ["b.jpg"]
    assert list(fs.failed) == ["a.jpg"] and "cannot read file" in fs.failed["a.jpg"]


def test_cached_features_are_reused_and_counted(tmp_path: Path) -> None:
    images = _folder(tmp_path, {"a.jpg": _jpeg((1, 2, 3)), "bad.jpg": b"junk", "c.jpg": _jpeg((7, 8, 9))})
    first = _run(images, tmp_path)
    again = _run(images, tmp_path)
    assert (first.cached, first.computed) == (0, 2) and (again.cached, again.computed) == (2, 0)
    assert again.names == first.names and list(again.failed) == ["bad.jpg"]
    np.testing.assert_array_equal(again.features, first.features)


@pytest.mark.parametrize(("n", "at_end"), [(100, False), (5, True)])
def test_the_feature_time_is_estimated_once(tmp_path: Path, n: int, at_end: bool) -> None:
    """After a first batch left out and a timed sample; a set too small for that reports its time."""
    images = _folder(tmp_path, {f"{i:03d}.jpg": _jpeg((i, 2 * i, 3)) for i in range(n)})
    onnx_path = _mean_colour_onnx(tmp_path / "mean.onnx")
    calls: list[tuple[int, float, int]] = []
    progress: list[str] = []

    def on_estimate(count: int, seconds: float) -> None:
        calls.append((count, seconds, len(progress)))

    compute_features(
        images,
        onnx_path=onnx_path,
        spec=SPEC,
        cache_root=tmp_path / "cache",
        batch_size=8,
        workers=1,
        on_estimate=on_estimate,
        on_decoded=lambda image, digest, array: progress.append(image.relpath),
    )
    [(count, seconds, decoded_by_then)] = calls
    assert count == n and seconds > 0
    assert decoded_by_then == n if at_end else decoded_by_then < n  # before the bulk of the pass
