"""The README's main command: `manylabel demo` trains on the bundled sample and predicts, offline."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
MANYLABEL = str(Path(sys.executable).parent / "manylabel")


def test_demo_trains_on_the_bundled_sample_and_predicts(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml")}
    proc = subprocess.run(
        [MANYLABEL, "demo", "--minutes", "0.3", "--max-epochs", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "saved manylabel-demo:" in out
    assert "estimated feature time" in out and "estimated:" in out
    table = out[out.index("filename,label_1") :].split("\n\n")[0]
    rows = list(csv.reader(io.StringIO(table)))
    assert rows[0][0] == "filename" and "score:t-shirt" in rows[0]
    assert [r[0] for r in rows[1:]] == [f"0000{i}.jpg" for i in range(5)]
    assert (tmp_path / "bentoml" / "models" / "manylabel-demo").is_dir()
    assert (tmp_path / ".cache" / "manylabel" / "features").is_dir()  # the feature cache was used
