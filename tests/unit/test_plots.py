"""training.plots: the PR-curve PNG is written atomically, draws data text literally, leaves no state."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import _pylab_helpers
from PIL import Image

from service.metrics import pr_curves
from training.plots import _figure, plot_pr_curves


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


# Label names come from users' CSVs: mathtext and LaTeX specials, legend-hiding "_", non-Latin scripts.
ODD_LABELS = ["price_$5_to_$10", "$x$", "a^b_c", "back\\slash", "50% off", "_leading", "café", "日本"]


def _odd_curves() -> dict:
    rng = np.random.default_rng(1)
    y_true = rng.random((200, len(ODD_LABELS))) < 0.4
    y_score = np.clip(0.4 * y_true + 0.6 * rng.random(y_true.shape), 0, 1)
    return pr_curves(y_true, y_score, ODD_LABELS, np.full(len(ODD_LABELS), 0.5))


def test_labels_and_title_from_data_render_literally(tmp_path: Path) -> None:
    curves, title = _odd_curves(), "shop_$1 — 100% ^_^ 日本"
    path = plot_pr_curves(curves, tmp_path / "pr.png", title=title)  # mathtext would raise here
    with Image.open(path) as image:
        image.verify()

    fig = _figure(curves, title)
    ax = fig.axes[0]
    expected = [f"{name} (AP {curves['per_label'][name]['ap']:.3f})" for name in ODD_LABELS]
    texts = ax.get_legend().get_texts()
    assert [t.get_text() for t in texts][: len(ODD_LABELS)] == expected  # none dropped, none altered
    assert ax.title.get_text() == title
    for text in [*texts, ax.title]:
        assert not text.get_parse_math() and not text.get_usetex()  # drawn as given, not as math


def test_a_caller_asking_for_latex_does_not_change_the_plot(tmp_path: Path) -> None:
    with matplotlib.rc_context({"text.usetex": True}):  # a notebook's settings; LaTeX may not exist
        plot_pr_curves(_odd_curves(), tmp_path / "pr.png", title="price_$5")
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
