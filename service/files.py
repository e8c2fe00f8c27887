"""Files on disk, done once: atomic writes, content hashes, and the zip guard for untrusted archives.

Atomic write: a temp file made with `mkstemp` (O_EXCL, never a fixed name that a planted symlink
could redirect) in the target's folder, fsync'd, `os.replace`d over the target, then the folder
fsync'd so the rename itself survives a power cut. A crash leaves the old file or the new one,
never half of either.

Zip guard: `check_member` is the one rule for a member of an untrusted .zip (uploads, training
sources): no absolute path, no `..`, no NUL, no over-long names, no symlink; `is_junk` names what
every reader skips (`__MACOSX`, hidden files).
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from service.errors import ArchiveError

MAX_NAME_BYTES = 255  # one file name, as on every common filesystem
MAX_PATH_BYTES = 1024  # a path inside a zip
_EOCD = b"PK\x05\x06"  # end-of-central-directory record: 22 bytes + a comment of up to 65,535
_EOCD_SEARCH = 22 + 65_535
# What zipfile raises on damaged members: RuntimeError for encrypted ones, NotImplementedError for an
# unknown compression, zlib / lzma errors for a corrupt stream, OSError for bz2 and short reads.
MEMBER_ERRORS = (
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for writing; on success it replaces `path` (see the docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def fsync_dir(directory: Path) -> None:
    """Persist a folder's entries (a rename) where the OS allows opening folders."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- zips ---------------------------------------------------------------------------------------


class TooManyMembers(ArchiveError):
    """A zip declares more members than the caller allows (a 413 for an upload)."""


def zip_entry_count(handle: BinaryIO) -> int:
    """The number of members a zip declares, read from its end record before `ZipFile()` parses (and
    holds in memory) the whole central directory. ArchiveError when there is no such record."""
    size = handle.seek(0, os.SEEK_END)
    start = max(0, size - _EOCD_SEARCH)
    handle.seek(start)
    tail = handle.read(size - start)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise ArchiveError("no end-of-central-directory record: truncated, or not a zip")
    (entries,) = struct.unpack_from("<H", tail, at + 10)
    return entries  # 0xFFFF means Zip64: more than any upload limit allows anyway


def open_zip(handle: BinaryIO, archive: str, *, max_members: int) -> zipfile.ZipFile:
    """A ZipFile over `handle`, refused (ArchiveError) when it declares more than `max_members`
    members of any kind (folders and non-images count: they cost memory too) or is not a zip."""
    try:
        entries = zip_entry_count(handle)
    except ArchiveError as exc:
        raise ArchiveError(f"{archive!r} is not a readable zip ({exc})") from None
    if entries > max_members:
        raise TooManyMembers(
            f"{archive!r} holds {entries:,} members (folders and other files count too), over the "
            f"limit of {max_members:,}; split it into smaller zips"
        )
    handle.seek(0)
    try:
        return zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive!r} is not a readable zip ({exc})") from exc


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str) -> bytes:
    """A member's bytes, at most its declared size; ArchiveError naming it when it is encrypted,
    damaged, or larger than its header says (headers can lie)."""
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{archive!r} member {info.filename!r} is encrypted; zip it without a password")
    try:
        with zf.open(info) as handle:
            content = handle.read(info.file_size + 1)
    except MEMBER_ERRORS as exc:
        raise ArchiveError(f"{archive!r} member {info.filename!r} cannot be read ({exc})") from exc
    if len(content) > info.file_size:
        raise ArchiveError(f"{archive!r} member {info.filename!r} is larger than its header says")
    return content


def check_member(archive: str, info: zipfile.ZipInfo) -> str:
    """The member's relative POSIX path if it is safe to use; ArchiveError naming it otherwise."""
    name = info.filename
    normalised = name.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    absolute = normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":")
    if absolute or ".." in parts or "\x00" in name:
        raise ArchiveError(
            f"{archive!r} holds the unsafe path {name[:200]!r} (absolute or with '..'); "
            "zip the images with relative paths"
        )
    too_long = any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts)
    if too_long or len(name.encode("utf-8")) > MAX_PATH_BYTES:
        raise ArchiveError(
            f"{archive!r} holds a path over the length limits ({MAX_NAME_BYTES} bytes per name, "
            f"{MAX_PATH_BYTES} per path): {name[:60]!r}…"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{archive!r} member {name[:200]!r} is a symbolic link; zip the files themselves")
    return "/".join(parts)


def is_junk(relpath: str) -> bool:
    """Folders and files every reader skips: macOS resource forks and hidden files."""
    parts = PurePosixPath(relpath.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)
