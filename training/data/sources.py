"""Where training images come from: a folder (recursive), a .zip, or a list of image files.

`open_source` turns any of the three into one sorted list of `ImageFile`s, so the rest of training never
needs to know which it was. A .zip is untrusted input: only its image members are extracted, into a
private temporary folder, after traversal, symlink, size and count checks; the folder is removed when
the `with` block ends.

Hidden files and folders (names starting with '.') and `__MACOSX` are skipped everywhere: they are
macOS/editor debris (`._photo.jpg` is not a photo), never training data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.errors import ArchiveError, ManylabelError
from service.files import MEMBER_ERRORS, check_member, is_junk, open_zip
from service.preprocess import IMAGE_SUFFIXES, is_image_name

log = logging.getLogger(__name__)

DEFAULT_MAX_FILES = 1_000_000
DEFAULT_MAX_BYTES = 50 * 2**30
_CHUNK = 1 << 20


class DataError(ManylabelError):
    """Training data (images, labels CSV, split) cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class ImageFile:
    """One training image: the name users see and the labels CSV names, and where to read it."""

    relpath: str  # posix path relative to the source root (loose files: shortest unique trailing path)
    path: Path  # absolute path to read


@dataclass(frozen=True)
class Sample:
    """An image and its labels (also importable from training.data.labels, where samples are made)."""

    image: ImageFile
    labels: frozenset[str]  # empty: a valid all-negative example


@contextmanager
def open_source(
    source: str | Path | Sequence[str | Path],
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[list[ImageFile]]:
    """Yield the source's image files sorted by `relpath`; remove any extracted files on exit.

    `source` is a folder (searched recursively), a `.zip`, one image file, or a list of image files.
    `max_files` caps the number of images of any source; `max_bytes` caps what a .zip may extract
    (a folder's files are already on disk, so there is nothing to guard).
    Raises DataError (missing path, no images) or ArchiveError (unsafe or unreadable .zip).
    """
    tmp: Path | None = None
    try:
        if isinstance(source, str | os.PathLike):
            path = Path(source).expanduser()
            if path.suffix.lower() == ".zip" and path.is_file():
                tmp = Path(tempfile.mkdtemp(prefix="manylabel-zip-"))  # mode 0700: private to us
                images = _extract_zip(path, tmp.resolve(), max_files, max_bytes)
            else:
                images = _scan_path(path, max_files)
        else:
            images = _loose_files([Path(os.path.abspath(Path(p).expanduser())) for p in source], max_files)
        log.info("%s: %d images", _describe(source), len(images))
        yield images
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _scan_path(path: Path, max_files: int) -> list[ImageFile]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a folder of images, a .zip or image files")
    if path.is_dir():
        images = _scan_dir(path, max_files)
        if not images:
            raise DataError(
                f"{path}: no images found (looked for {_suffixes()}, in subfolders too; hidden files "
                "and __MACOSX are skipped)"
            )
        return images
    if not is_image_name(path.name):
        raise DataError(f"{path}: not a folder, a .zip or an image file ({_suffixes()})")
    return _loose_files([Path(os.path.abspath(path))], max_files)


def _scan_dir(root: Path, max_files: int) -> list[ImageFile]:
    root = root.resolve()
    images: list[ImageFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]  # prune: never descend into them
        for name in filenames:
            if is_junk(name) or not is_image_name(name):
                continue
            path = Path(dirpath, name)
            images.append(ImageFile(path.relative_to(root).as_posix(), path))
            if len(images) > max_files:
                raise DataError(
                    f"{root}: more than {max_files:,} images; train on a subset or raise max_files"
                )
    return sorted(images, key=lambda im: im.relpath)


def _loose_files(paths: Sequence[Path], max_files: int) -> list[ImageFile]:
    if not paths:
        raise DataError("no image files given")
    chosen: dict[Path, None] = {}  # ordered set: naming the same file twice is not a duplicate image
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path} is a folder; pass a folder on its own, not in a list of files")
        if is_junk(path.name) or not is_image_name(path.name):
            log.warning("skipping %s: hidden or not an image file name (%s)", path, _suffixes())
            continue
        chosen[path] = None
    if not chosen:
        raise DataError(f"none of the {len(paths)} files given is an image ({_suffixes()})")
    if len(chosen) > max_files:
        raise DataError(f"{len(chosen):,} images given, more than the limit of {max_files:,}")
    names = _unique_names(list(chosen))
    return sorted((ImageFile(names[p], p) for p in chosen), key=lambda im: im.relpath)


def _unique_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Name each file by its bare name, or by the shortest trailing path that tells apart files sharing it.

    `x/a.jpg` and `y/a.jpg` become exactly that (not `a.jpg` and `a~2.jpg`), so a CSV that says `a.jpg`
    is reported as ambiguous instead of silently matching whichever came first.
    """
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[path.name].append(path)
    names: dict[Path, str] = {}
    for group in groups.values():
        parts = {p: [s.strip("/\\") for s in p.parts if s.strip("/\\")] for p in group}
        depth = 1
        while len({"/".join(parts[p][-depth:]) for p in group}) < len(group):
            depth += 1  # terminates: distinct absolute paths have distinct full part lists
        names.update({p: "/".join(parts[p][-depth:]) for p in group})
    return names


def _extract_zip(archive: Path, dest: Path, max_files: int, max_bytes: int) -> list[ImageFile]:
    try:
        members = 2 * max_files + 16  # folders and non-images count: a huge directory costs memory too
        with open(archive, "rb") as handle, open_zip(handle, str(archive), max_members=members) as zf:
            planned = _plan_members(zf, archive, max_files, max_bytes)
            used = 0
            images = []
            for info, rel in planned:
                used = _extract_member(zf, info, rel, dest, archive, used, max_bytes)
                images.append(ImageFile(rel, dest.joinpath(*rel.split("/"))))
    except MEMBER_ERRORS as exc:
        raise ArchiveError(
            f"{archive}: not a readable .zip ({exc}); re-create it, or unzip it and pass the folder"
        ) from exc
    if not images:
        raise DataError(
            f"{archive}: the .zip holds no images ({_suffixes()}; hidden files and __MACOSX are skipped)"
        )
    return sorted(images, key=lambda im: im.relpath)


def _plan_members(
    zf: zipfile.ZipFile, archive: Path, max_files: int, max_bytes: int
) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every member's name and the declared totals before a single byte is written."""
    planned: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    declared = 0
    for info in zf.infolist():
        rel = check_member(str(archive), info)  # any unsafe member refuses the whole archive
        if info.is_dir() or not rel or is_junk(rel) or not is_image_name(rel):
            continue
        if rel in seen:
            raise ArchiveError(f"{archive}: member {rel!r} appears twice; re-create the .zip")
        seen.add(rel)
        declared += info.file_size
        if len(planned) >= max_files:
            raise ArchiveError(f"{archive}: member {rel!r} is past the limit of {max_files:,} images")
        if declared > max_bytes:
            raise ArchiveError(
                f"{archive}: member {rel!r} takes the uncompressed size past the limit of {max_bytes:,} "
                "bytes; split the .zip or raise max_bytes"
            )
        planned.append((info, rel))
    return planned


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str, dest: Path, archive: Path, used: int, limit: int
) -> int:
    """Stream one member to disk, counting bytes, and return the new total written.

    Headers can lie about sizes, so the declared-size check in `_plan_members` is not enough on its own
    (zipfile itself stops at the declared size today; counting here does not depend on that).
    """
    target = dest.joinpath(*rel.split("/"))
    if not target.resolve().is_relative_to(dest):  # belt and braces behind check_member
        raise ArchiveError(f"{archive}: member {rel!r} would be written outside the extraction folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise ArchiveError(f"{archive}: member {rel!r} is larger than its header says; refused")
            if used + written > limit:
                raise ArchiveError(
                    f"{archive}: member {rel!r} takes the uncompressed size past the limit of {limit:,} bytes"
                )
            out.write(chunk)
    return used + written


def _suffixes() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def _describe(source: str | Path | Sequence[str | Path]) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"{len(source)} files"
