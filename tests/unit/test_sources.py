"""Image sources: folders, file lists and (hostile) zips, built in tmp_path."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from service.errors import ArchiveError
from training.data.sources import DataError, ImageFile, open_source


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes() if data is None else data)
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def relpaths(images: list[ImageFile]) -> list[str]:
    return [im.relpath for im in images]


def test_folder_is_searched_recursively_skipping_hidden_and_macosx(tmp_path: Path) -> None:
    for name in ["b.png", "sub/deeper/a.JPG", ".hidden/c.jpg", ".d.jpg", "__MACOSX/e.jpg", "notes.txt"]:
        write(tmp_path / name)
    with open_source(tmp_path) as images:
        assert relpaths(images) == ["b.png", "sub/deeper/a.JPG"]
        assert all(im.path.is_absolute() and im.path.is_file() for im in images)
        assert images[1].path == (tmp_path / "sub/deeper/a.JPG").resolve()


def test_missing_path_and_imageless_folder_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"), open_source(tmp_path / "nope"):
        pass
    write(tmp_path / "readme.txt", b"hi")
    write(tmp_path / ".x.jpg")
    with pytest.raises(DataError, match="no images found"), open_source(tmp_path):
        pass


def test_file_list_names_duplicates_by_their_shortest_unique_path(tmp_path: Path) -> None:
    files = [write(tmp_path / "x/a.jpg"), write(tmp_path / "y/a.jpg"), write(tmp_path / "z/b.jpg")]
    with open_source([*files, str(files[0])]) as images:  # the same file twice is one image
        assert relpaths(images) == ["b.jpg", "x/a.jpg", "y/a.jpg"]
        assert images[1].path == files[0]


def test_file_list_skips_non_images_and_rejects_missing_files(tmp_path: Path) -> None:
    img, txt = write(tmp_path / "a.png"), write(tmp_path / "a.txt", b"x")
    with open_source([img, txt]) as images:
        assert relpaths(images) == ["a.png"]
    with pytest.raises(DataError, match="no such file"), open_source([img, tmp_path / "gone.jpg"]):
        pass
    with pytest.raises(DataError, match="none of the 1 files"), open_source([txt]):
        pass


def test_zip_extracts_only_images_and_cleans_up(tmp_path: Path) -> None:
    data = png_bytes((1, 2, 3))
    archive = make_zip(
        tmp_path / "set.zip",
        {"set/": b"", "set/a.png": data, "set/sub/b.jpg": data, "set/notes.txt": b"x",
         "__MACOSX/set/._a.png": b"junk", "set/.DS_Store": b"junk"},
    )  # fmt: skip
    with open_source(archive) as images:
        assert relpaths(images) == ["set/a.png", "set/sub/b.jpg"]
        assert images[0].path.read_bytes() == data
        root = images[0].path.parents[1]
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["a.png", "b.jpg"]
    assert not root.exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.jpg", r"'\.\.'"),
        ("ok/../../evil.jpg", r"'\.\.'"),
        ("..\\evil.jpg", r"'\.\.'"),
        ("/etc/evil.jpg", "absolute"),
        ("\\evil.jpg", "absolute"),
        ("C:/evil.jpg", "absolute"),
    ],
)
def test_zip_with_escaping_member_is_refused(tmp_path: Path, name: str, why: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {"good.png": png_bytes(), name: png_bytes()})
    with pytest.raises(ArchiveError, match=why), open_source(archive):
        pass
    assert not (tmp_path / "evil.jpg").exists()


def test_zip_with_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.png", png_bytes())
        info = zipfile.ZipInfo("link.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'link.jpg' is a symbolic link"), open_source(archive):
        pass


def test_zip_file_count_limit(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes() for i in range(3)})
    too_many = pytest.raises(ArchiveError, match=r"'2.png' is past the limit of 2 images")
    with too_many, open_source(archive, max_files=2):
        pass
    with open_source(archive, max_files=3) as images:
        assert len(images) == 3


def test_zip_declared_size_limit(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "big.zip", {"a.png": b"x" * 100, "b.png": b"y" * 100})
    too_big = pytest.raises(ArchiveError, match=r"'b.png' takes the uncompressed size past the limit of 150")
    with too_big, open_source(archive, max_bytes=150):
        pass


def test_zip_whose_header_lies_about_the_size_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", b"x" * 1000)
    raw = bytearray(buf.getvalue())
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 10)  # declared uncompressed size: 10 instead of 1000
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError), open_source(archive, max_bytes=500):
        pass


def test_not_a_zip_and_imageless_zip(tmp_path: Path) -> None:
    fake = write(tmp_path / "fake.zip", b"this is not a zip")
    with pytest.raises(ArchiveError, match="not a readable zip"), open_source(fake):
        pass
    empty = make_zip(tmp_path / "empty.zip", {"readme.txt": b"x"})
    with pytest.raises(DataError, match="holds no images"), open_source(empty):
        pass


def test_single_image_and_non_image_file(tmp_path: Path) -> None:
    img = write(tmp_path / "one.webp")
    with open_source(str(img)) as images:
        assert relpaths(images) == ["one.webp"]
    csv = write(tmp_path / "labels.csv", b"a.jpg,cat")
    with pytest.raises(DataError, match="not a folder, a .zip or an image"), open_source(csv):
        pass


def test_zip_member_streaming_more_than_declared_is_refused(tmp_path: Path, monkeypatch) -> None:
    # zipfile stops at the declared size itself; a reader that did not must still be caught.
    archive = make_zip(tmp_path / "a.zip", {"a.png": b"x" * 10})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info: io.BytesIO(b"x" * 1000))
    with pytest.raises(ArchiveError, match="larger than its header says"), open_source(archive):
        pass
