"""PR-curve figure for the training report, drawn with matplotlib's Agg canvas.

The figure is built on a bare ``Figure`` + ``FigureCanvasAgg``, never through ``pyplot``, so no global
figure registry or backend choice leaks into the caller (a training run, a test, a notebook).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.manifest import atomic_write_bytes

logger = logging.getLogger(__name__)


def _draw_curve(ax: Axes, curve: dict, name: str, **style: object) -> str:
    """Draw one curve and its operating point; return the line colour."""
    if curve["ap"] is None:  # no positive: the curve means nothing, keep only the legend entry
        (line,) = ax.plot([], [], label=f"{name} (no positives)", **style)
        return line.get_color()
    label = f"{name} (AP {curve['ap']:.3f})"
    (line,) = ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", label=label, **style)
    op = curve["operating_point"]
    ax.plot([op["recall"]], [op["precision"]], "o", color=line.get_color(), markersize=5)
    return line.get_color()


def _draw_all(ax: Axes, curve: dict) -> None:
    color = _draw_curve(ax, curve, "all (micro)", color="black", linewidth=2.2, zorder=3)
    op = curve["operating_point"]
    # Dashed guides from the axes to the pooled operating point: where the model runs today.
    ax.plot([op["recall"], op["recall"]], [0.0, op["precision"]], "--", color=color, linewidth=0.9)
    ax.plot([0.0, op["recall"]], [op["precision"], op["precision"]], "--", color=color, linewidth=0.9)


def _render(curves: dict, title: str) -> bytes:
    fig = Figure(figsize=(7.5, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(curves["per_label"]))]
    for colour, (name, curve) in zip(colours, curves["per_label"].items(), strict=True):
        _draw_curve(ax, curve, name, color=colour, linewidth=1.1, alpha=0.85)
    _draw_all(ax, curves["all"])
    ax.set(xlim=(0.0, 1.01), ylim=(0.0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ncol = 1 + len(curves["per_label"]) // 16  # many labels: spread the legend rather than overflow
    ax.legend(loc="lower left", fontsize="x-small", ncol=ncol, framealpha=0.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_pr_curves(curves: dict, path: Path, *, title: str) -> Path:
    """Write one PNG with the pooled and per-label PR curves from ``metrics.pr_curves``.

    Each curve is labelled with its AP and its operating point is a dot; the pooled ("all") curve also
    gets dashed guides at its operating point. The file is written atomically (temp file, then
    ``os.replace``). Returns ``path``.
    """
    path = Path(path)
    atomic_write_bytes(path, _render(curves, title))
    logger.info("wrote PR curves to %s", path)
    return path
