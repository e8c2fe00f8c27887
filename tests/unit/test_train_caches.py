"""What a warm retrain reuses: the backbone graph (exported and checked once per backbone), the features
(keyed by backbone) and the thumbnails (keyed by image content). Counted calls, no real backbone."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training import artifacts, extractor
from training.backbone import BACKBONES, backbone_onnx, choice
from training.data.sources import ImageFile
from training.extractor import FeatureExtractor
from training.features import FeatureCache, cache_key, compute_features


class TinyNet(nn.Module):
    """Stands in for EfficientNet: `extract_features` maps (N, 3, H, W) to (N, 8, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the weights loader with a tiny net; returns the backbones it was asked for."""
    calls: list[str] = []

    def fake(spec, name="lite0"):
        calls.append(name)
        return FeatureExtractor(TinyNet(), spec).eval()

    monkeypatch.setattr(extractor, "load_backbone", fake)
    return calls


def test_the_backbone_is_exported_once_then_reused(tmp_path: Path, loads: list[str]) -> None:
    spec = choice("lite0").preprocessing()
    first = backbone_onnx(tmp_path, spec, "lite0")
    mtime = first.stat().st_mtime_ns
    assert backbone_onnx(tmp_path, spec, "lite0") == first
    assert loads == ["lite0"] and first.stat().st_mtime_ns == mtime
    assert first.name.startswith("efficientnet-lite0-")


def test_a_damaged_backbone_file_is_exported_again(tmp_path: Path, loads: list[str]) -> None:
    spec = choice("lite0").preprocessing()
    path = backbone_onnx(tmp_path, spec, "lite0")
    path.write_bytes(path.read_bytes()[:-10])  # half-written, or edited
    assert backbone_onnx(tmp_path, spec, "lite0") == path
    assert loads == ["lite0", "lite0"]


def test_each_backbone_has_its_own_graph_size_and_feature_cache(tmp_path: Path, loads: list[str]) -> None:
    paths = {name: backbone_onnx(tmp_path, choice(name).preprocessing(), name) for name in BACKBONES}
    assert len(set(paths.values())) == 3 and loads == list(BACKBONES)
    assert [choice(n).preprocessing().image_size for n in BACKBONES] == [224, 240, 260]
    keys = {name: cache_key(path, choice(name).preprocessing()) for name, path in paths.items()}
    assert len(set(keys.values())) == 3
    assert all(keys[name].startswith(f"efficientnet-{name}-") for name in BACKBONES)


def test_features_of_two_backbones_never_mix(tmp_path: Path, loads: list[str]) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(image)
    images = [ImageFile("a.png", image)]
    got = {}
    for name in ("lite0", "lite1"):
        spec = choice(name).preprocessing()
        onnx_path = backbone_onnx(tmp_path, spec, name)
        got[name] = compute_features(images, onnx_path=onnx_path, spec=spec, cache_root=tmp_path, workers=1)
        assert got[name].computed == 1  # the other backbone's cached vector was not taken
        again = compute_features(images, onnx_path=onnx_path, spec=spec, cache_root=tmp_path, workers=1)
        assert again.cached == 1
        np.testing.assert_array_equal(again.features, got[name].features)
    assert got["lite0"].digests == got["lite1"].digests  # the content hash is the image's, not the key's


def _images(tmp_path: Path, n: int) -> tuple[list[str], dict[str, Path], dict[str, str]]:
    rng = np.random.default_rng(1)
    names, paths, digests = [], {}, {}
    for i in range(n):
        path = tmp_path / f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), np.uint8)).save(path)
        names.append(path.name)
        paths[path.name] = path
        digests[path.name] = f"{i:02d}" + "0" * 62
    return names, paths, digests


def test_thumbnails_are_made_once_per_image_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names, paths, digests = _images(tmp_path, 5)
    made: list[Path] = []
    real = artifacts._thumbnail
    monkeypatch.setattr(artifacts, "_thumbnail", lambda p: made.append(p) or real(p))
    cache = tmp_path / "cache"
    runs = []
    for k in range(2):
        workdir = tmp_path / f"run{k}"
        workdir.mkdir()
        artifacts.write_thumbnails(workdir, names, paths, 2, digests=digests, cache_dir=cache)
        with zipfile.ZipFile(workdir / artifacts.THUMBNAILS) as zf:
            runs.append({m: zf.read(m) for m in zf.namelist()})
    assert len(made) == 5  # the second run decoded nothing
    assert runs[0] == runs[1] and len(runs[0]) == 5
    with Image.open(io.BytesIO(runs[0]["000000.jpg"])) as thumb:
        assert thumb.size == (artifacts.THUMBNAIL_SIZE, 128)  # aspect kept, long side 192


def test_a_damaged_cached_thumbnail_is_made_again(tmp_path: Path) -> None:
    names, paths, digests = _images(tmp_path, 1)
    cache = artifacts.ThumbnailCache(tmp_path / "cache")
    good = cache.get(digests[names[0]], paths[names[0]])
    cached = next((tmp_path / "cache").rglob("*.jpg"))
    cached.write_bytes(good[: len(good) // 2])  # torn by a crash
    again = artifacts.ThumbnailCache(tmp_path / "cache")
    assert again.get(digests[names[0]], paths[names[0]]) == good and again.made == 1


def test_feature_cache_reads_what_it_wrote_and_refuses_damaged_entries(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "key")
    vectors = {
        f"{i:02d}" + "f" * 62: np.random.default_rng(i).normal(size=8).astype(np.float32) for i in range(3)
    }
    for digest, vector in vectors.items():
        cache.save(digest, vector)
    reader = FeatureCache(tmp_path, "key")  # a later run: the header is learnt from the first read
    for digest, vector in vectors.items():
        np.testing.assert_array_equal(reader.load(digest), vector)
    first, second, _ = (cache._path(d) for d in vectors)
    first.write_bytes(first.read_bytes()[:-4])  # torn write
    second.write_bytes(b"not an npy file")
    assert FeatureCache(tmp_path, "key").load(next(iter(vectors))) is None
    assert reader.load(list(vectors)[0]) is None and reader.load(list(vectors)[1]) is None
    assert reader.load("ab" + "0" * 62) is None  # never cached
    np.testing.assert_array_equal(reader.load(list(vectors)[2]), vectors[list(vectors)[2]])


def test_thumbnails_made_from_the_feature_pass_arrays_need_no_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.preprocess import load_image

    xs = np.linspace(0, 255, 300)[None, :, None]
    ys = np.linspace(0, 255, 200)[:, None, None]
    picture = np.concatenate([np.broadcast_to(xs, (200, 300, 1)), np.broadcast_to(ys, (200, 300, 1))] * 2, 2)
    path = tmp_path / "ramp.jpg"
    Image.fromarray(picture[..., :3].astype(np.uint8)).save(path, quality=95)
    digest = "cd" * 32
    cache = artifacts.ThumbnailCache(tmp_path / "cache")
    cache.put_array(digest, path, load_image(path, choice("lite0").preprocessing()))  # as fit's pass does
    direct = artifacts._thumbnail(path)
    monkeypatch.setattr(artifacts, "_thumbnail", lambda p: pytest.fail(f"decoded {p} again"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    paths, digests = {"ramp.jpg": path}, {"ramp.jpg": digest}
    artifacts.write_thumbnails(workdir, ["ramp.jpg"], paths, 1, digests=digests, cache_dir=tmp_path / "cache")
    with zipfile.ZipFile(workdir / artifacts.THUMBNAILS) as zf:
        got = Image.open(io.BytesIO(zf.read("000000.jpg")))
    want = Image.open(io.BytesIO(direct))
    assert got.size == want.size == (192, 128)  # the photo's aspect, not the square model input's
    assert np.abs(np.asarray(got, float) - np.asarray(want, float)).mean() < 3  # the same picture


def test_a_thumbnail_from_an_array_keeps_the_upright_aspect_of_a_rotated_photo(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 300 x 200, shown 200 x 300
    Image.new("RGB", (300, 200), (200, 30, 30)).save(path, exif=exif)
    cache = artifacts.ThumbnailCache(tmp_path / "cache")
    cache.put_array("ab" * 32, path, np.zeros((224, 224, 3), np.uint8))
    with Image.open(io.BytesIO(cache.get("ab" * 32, path))) as thumb:
        assert thumb.size == (128, 192)
