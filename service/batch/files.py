"""Which images a batch run sends, and in which order.

Order and shards: folders are walked depth-first, each folder's entries sorted by name (one folder
listed at a time), so the order is the lexicographic order of path components and never depends on
the file system. Shard I/N takes the files whose blake2b(relative path) % N == I: a file's shard
depends on its own path only, so shards stay stable when files are added or removed (an index
modulo N would move every later file to another shard) and need no shared listing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.errors import BatchError
from service.preprocess import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` with 0 <= I < N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise BatchError(f"--shard {text!r} is not I/N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise BatchError(f"--shard {text!r}: need 0 <= I < N")
        return cls(index, count)

    def owns(self, relpath: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def iter_images(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of each image under `root`, lazily, in sorted component order.

    Hidden entries and `__MACOSX` are skipped, like zip members in the service.
    """
    root = Path(root)
    if root.is_file():
        yield root.name, root
    elif root.is_dir():
        yield from _walk(root, "")
    else:
        raise BatchError(f"--images {root} does not exist")


def _walk(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)  # one folder's names in memory, not the tree's
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield prefix + entry.name, Path(entry.path)


def sort_key(relpath: str) -> str:
    """The walk order of a relative path: its components compared in turn, as one string.

    "/" becomes NUL, which sorts before any character a name can hold: "a/x" < "a b/y", as the walk
    lists folder "a" before "a b". One string, not a tuple of parts: sorting many paths costs less.
    """
    return relpath.replace("/", "\x00")
