"""PR-curve figure for the training report, drawn with matplotlib's Agg canvas.

The figure is built on a bare ``Figure`` + ``FigureCanvasAgg``, never through ``pyplot``, so no global
figure registry or backend choice leaks into the caller (a training run, a test, a notebook).

Label names and titles come from the user's data, so every text is drawn literally: a label such as
``price_$5_to_$10`` must not be parsed as mathtext (it fails to parse, after the whole run), nor handed
to LaTeX when the caller's rcParams ask for ``text.usetex``.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import matplotlib
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from service.manifest import atomic_write_bytes

logger = logging.getLogger(__name__)

# Tried, in order, for characters the default DejaVu Sans lacks (CJK labels); only installed ones are used.
FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Arial Unicode MS",
)


def _literal_text() -> dict:
    """rcParams under which all text renders as given: no mathtext, no LaTeX, CJK fallbacks if any."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallbacks = [name for name in FALLBACK_FONTS if name in installed]
    return {
        "text.usetex": False,
        "text.parse_math": False,
        "font.sans-serif": [*matplotlib.rcParams["font.sans-serif"], *fallbacks],
    }


def _draw_curve(ax: Axes, curve: dict, name: str, **style: object) -> Line2D:
    """Draw one curve and its operating point; return the curve's line (its label is the legend's)."""
    if curve["ap"] is None:  # no positive: the curve means nothing, keep only the legend entry
        (line,) = ax.plot([], [], label=f"{name} (no positives)", **style)
        return line
    label = f"{name} (AP {curve['ap']:.3f})"
    (line,) = ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", label=label, **style)
    op = curve["operating_point"]
    ax.plot([op["recall"]], [op["precision"]], "o", color=line.get_color(), markersize=5)
    return line


def _draw_all(ax: Axes, curve: dict) -> Line2D:
    line = _draw_curve(ax, curve, "all (micro)", color="black", linewidth=2.2, zorder=3)
    if curve["ap"] is None:
        return line
    color, op = line.get_color(), curve["operating_point"]
    # Dashed guides from the axes to the pooled operating point: where the model runs today.
    ax.plot([op["recall"], op["recall"]], [0.0, op["precision"]], "--", color=color, linewidth=0.9)
    ax.plot([0.0, op["recall"]], [op["precision"], op["precision"]], "--", color=color, linewidth=0.9)
    return line


def _figure(curves: dict, title: str) -> Figure:
    with matplotlib.rc_context(_literal_text()):  # texts keep these settings when drawn later
        return _build(curves, title)


def _build(curves: dict, title: str) -> Figure:
    fig = Figure(figsize=(7.5, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(curves["per_label"]))]
    lines = [
        _draw_curve(ax, curve, name, color=colour, linewidth=1.1, alpha=0.85)
        for colour, (name, curve) in zip(colours, curves["per_label"].items(), strict=True)
    ]
    lines.append(_draw_all(ax, curves["all"]))
    ax.set(xlim=(0.0, 1.01), ylim=(0.0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ncol = 1 + len(curves["per_label"]) // 16  # many labels: spread the legend rather than overflow
    # Handles and labels given explicitly: legend() would silently drop a label starting with "_".
    labels = [line.get_label() for line in lines]
    ax.legend(lines, labels, loc="lower left", fontsize="x-small", ncol=ncol, framealpha=0.8)
    return fig


def _render(curves: dict, title: str) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context(_literal_text()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _figure(curves, title).savefig(buffer, format="png")
    # A missing glyph warns once per character per draw: say it once, pass any other warning on.
    glyphs = [w for w in caught if "missing from font" in str(w.message)]
    if glyphs:
        logger.warning(
            "no installed font draws some characters of the labels or title; they show as boxes "
            "(a font such as Noto Sans CJK would draw them)"
        )
    for w in caught:
        if w not in glyphs:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
