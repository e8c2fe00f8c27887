"""training.plots: the PR-curve PNG is written atomically and leaves no matplotlib state behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import _pylab_helpers
from PIL import Image

from service.metrics import pr_curves
from training.plots import plot_pr_curves


def _curves() -> dict:
    rng = np.random.default_rng(0)
    y_true = rng.random((300, 4)) < 0.3
    y_true[:, 3] = False  # a label without positives: legend entry only
    y_score = np.clip(0.3 * y_true + 0.7 * rng.random((300, 4)), 0, 1)
    return pr_curves(y_true, y_score, ["cat", "dog", "bird", "none"], np.array([0.5, 0.4, 0.6, 0.5]))


def test_plot_writes_a_valid_png_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "report" / "pr.png"
    assert plot_pr_curves(_curves(), path, title="validation") == path
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
        image.verify()
    assert [p.name for p in path.parent.iterdir()] == ["pr.png"]  # the temp file was renamed away
    assert _pylab_helpers.Gcf.get_num_fig_managers() == 0  # nothing registered with pyplot


def test_plot_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "pr.png"
    path.write_bytes(b"stale")
    plot_pr_curves(_curves(), path, title="again")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]
