"""Precision-recall charts as SVG geometry, for the offline HTML report: no matplotlib, no script.

`pr_chart` turns `metrics.pr_curves` curves (the stored points, as GET /pr_curve answers them) into
chart coordinates; the report's template draws them as inline ``<svg>`` (the page draws the same
curves in the browser, `service/server/ui/chart.js`). Recall runs left to right, precision bottom to
top, both from 0 to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WIDTH, HEIGHT = 340, 270
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 36
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def x_of(recall: float) -> float:
    return round(LEFT + recall * (WIDTH - LEFT - RIGHT), 1)


def y_of(precision: float) -> float:
    return round(HEIGHT - BOTTOM - precision * (HEIGHT - TOP - BOTTOM), 1)


@dataclass(frozen=True)
class Series:
    """One curve of a chart: its CSS class, legend text, polyline points and operating point."""

    css: str
    legend: str
    points: str  # "x,y x,y ..." or "" for a label without positives
    operating_point: tuple[float, float] | None


@dataclass(frozen=True)
class Chart:
    title: str
    series: list[Series]


def _series(css: str, name: str, curve: Mapping) -> Series:
    if curve["ap"] is None:  # no positive: the curve means nothing
        return Series(css, f"{name}: no positives", "", None)
    pairs = zip(curve["recall"], curve["precision"], strict=True)
    points = " ".join(f"{x_of(recall)},{y_of(precision)}" for recall, precision in pairs)
    op = curve["operating_point"]
    legend = f"{name}: AP {curve['ap']:.3f} (P {op['precision']:.2f}, R {op['recall']:.2f})"
    return Series(css, legend, points, (x_of(op["recall"]), y_of(op["precision"])))


def pr_chart(title: str, curves: Mapping[tuple[str, str], Mapping]) -> Chart:
    """A chart of (which, split) -> curve, each drawn with the CSS classes ``which`` and ``split``."""
    return Chart(title, [_series(f"{w} {s}", f"{w}, {s}", c) for (w, s), c in curves.items()])


def axes() -> dict:
    """Grid lines and tick labels, for the template."""
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "x0": x_of(0.0),
        "x1": x_of(1.0),
        "y0": y_of(0.0),
        "y1": y_of(1.0),
        "ticks": [{"value": f"{t:.1f}", "x": x_of(t), "y": y_of(t)} for t in TICKS],
    }
