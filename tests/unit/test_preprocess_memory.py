"""Peak memory of decoding a hostile-sized image: a 130 kB PNG of 64 Mpx, 16 bits a pixel.

Each case runs in a fresh interpreter and reports its own peak RSS (`ru_maxrss`) before and after
the decode, so nothing else in the test session counts. The bound is the default `max_bytes`
(max_pixels x 4 = 256 MB): before the fix this decode peaked at ~1.7 GiB (float64 copies of the
whole image), after it at ~205 MiB (the 16-bit image, its 8-bit copy and one strip of temporaries).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess decoding 64 Mpx: ~3 s

ROOT = Path(__file__).resolve().parents[2]
SIDE = 8000  # 8000 x 8000 = 64,000,000 pixels = DEFAULT_MAX_PIXELS: allowed, the worst allowed case

SCRIPT = r"""
import json, resource, struct, sys, zlib
from service.errors import ImageTooLargeError
from service.manifest import Preprocessing
from service.preprocess import load_image

def png16_zeros(side):
    # Streamed, so that building the file never holds the 128 MB of raw rows.
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer, row, parts = zlib.compressobj(9), bytes(1 + 2 * side), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")

spec = Preprocessing(image_size=224)
load_image(png16_zeros(64), spec)  # imports and plugin registration happen before the baseline
data = png16_zeros(SIDE)
kwargs = json.loads(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    out = load_image(data, spec, name="zeros.png", **kwargs)
    result = {"shape": list(out.shape), "max": int(out.max())}
except ImageTooLargeError as exc:
    result = {"refused": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({**result, "file_bytes": len(data), "peak_delta": after - before}))
""".replace("SIDE", str(SIDE))


def _decode_in_subprocess(**kwargs: object) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(kwargs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_64_mpx_16_bit_png_decodes_within_max_bytes() -> None:
    report = _decode_in_subprocess()
    assert report["file_bytes"] < 200_000  # the attack: a tiny upload
    assert report["shape"] == [224, 224, 3] and report["max"] == 0
    bound = 64_000_000 * 4  # the default max_bytes at the default max_pixels
    assert report["peak_delta"] < bound, f"peak grew by {report['peak_delta'] / 2**20:.0f} MiB"


def test_a_lower_max_bytes_refuses_it_from_the_header() -> None:
    report = _decode_in_subprocess(max_bytes=100_000_000)
    assert "mode I;16 takes 128,000,000 bytes decoded" in report["refused"]
    assert report["peak_delta"] < 16 << 20  # refused before any pixel was decoded
