"""Which files the journal has answered, and where: 24 bytes a file, whatever the length of its path.

A 250k-image journal held as parsed records took over 1 GiB (the batch Job's limit); held as a
`{relpath: offset}` dict it still costs ~130 bytes a file. `DoneIndex` keeps a 128-bit blake2b
digest of each relative path and the offset of its done record in three sorted arrays (8 bytes
each), plus a small dict of recent changes merged into them once it grows: two paths sharing a
digest would take about 2**64 files to expect once.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left

MERGE_AT = 16384  # recent changes kept in a dict before they are merged into the arrays
_LOW = (1 << 64) - 1
_GONE = -1  # offset of a file whose latest record is not a done one


def digest(relpath: str) -> int:
    """A 128-bit key for a relative path (surrogate-escaped names, from undecodable bytes, included)."""
    data = relpath.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


class DoneIndex:
    """relpath -> offset of its done record; `in`, `get`, `add`, `discard` and `len`."""

    def __init__(self) -> None:
        self._high = array("Q")  # sorted by (high, low)
        self._low = array("Q")
        self._offsets = array("q")  # _GONE where a later record undid the done one
        self._recent: dict[int, int] = {}  # digest -> offset, newer than the arrays
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __contains__(self, relpath: str) -> bool:
        return self.get(relpath) is not None

    def get(self, relpath: str) -> int | None:
        offset = self._find(digest(relpath))
        return None if offset == _GONE else offset

    def add(self, relpath: str, offset: int) -> None:
        self._set(digest(relpath), offset)

    def discard(self, relpath: str) -> None:
        key = digest(relpath)
        if self._find(key) != _GONE:
            self._set(key, _GONE)

    def compact(self) -> None:
        """Merge the recent changes now (once a journal is read: the dict costs ~5x the arrays)."""
        if self._recent:
            self._merge()

    def _set(self, key: int, offset: int) -> None:
        self._live += (offset != _GONE) - (self._find(key) != _GONE)
        self._recent[key] = offset
        if len(self._recent) >= MERGE_AT:
            self._merge()

    def _find(self, key: int) -> int:
        if key in self._recent:
            return self._recent[key]
        high, low = key >> 64, key & _LOW
        i = bisect_left(self._high, high)
        while i < len(self._high) and self._high[i] == high:
            if self._low[i] == low:
                return self._offsets[i]
            i += 1
        return _GONE

    def _merge(self) -> None:
        """Fold the recent changes into new sorted arrays: slices of the old ones copied between them."""
        old = (self._high, self._low, self._offsets)
        new = (array("Q"), array("Q"), array("q"))
        start = 0
        for key, offset in sorted(self._recent.items()):
            high, low = key >> 64, key & _LOW
            end = bisect_left(old[0], high, start)
            while end < len(old[0]) and old[0][end] == high and old[1][end] < low:
                end += 1
            for column, values in zip(new, old, strict=True):
                column.extend(values[start:end])
            replaced = end < len(old[0]) and old[0][end] == high and old[1][end] == low
            start = end + replaced
            new[0].append(high)
            new[1].append(low)
            new[2].append(offset)
        for column, values in zip(new, old, strict=True):
            column.extend(values[start:])
        self._high, self._low, self._offsets = new
        self._recent = {}
