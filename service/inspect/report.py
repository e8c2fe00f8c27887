"""`write_report`: one self-contained HTML file about a stored model, readable offline.

The page is a Jinja2 template (`templates/report.html.j2`, autoescaped: label and image names are
the user's data). Everything is inline: CSS in a <style> block, the PR curves as SVG drawn from the
stored curve points (`service.inspect.charts`), thumbnails as base64 data URIs; no script, no external
asset, and no matplotlib, so a serving-only install writes it too. Numbers come from the stored
scores, at the thresholds in force (the custom ones once set, else the optimised ones) unless a
profile is given.
"""

from __future__ import annotations

import base64
import functools
import logging
from pathlib import Path

import jinja2

from service.errors import RequestError
from service.files import atomic_write_bytes
from service.inspect import charts
from service.inspect.inspector import Inspector
from service.inspect.records import SPLITS
from service.inspect.views import confusion, curves
from service.manifest import WHICH_MODELS
from service.store import StoredModel
from service.tables import GLOBAL
from service.thresholds import Thresholds

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
CURVE_POINTS = 100  # per curve: plenty for a 340-pixel chart, and the file stays small with many labels
PROFILE_COLUMNS = ("high_precision", "high_recall")
CHART_SERIES = [(w, s) for s in ("validation", "train") for w in WHICH_MODELS]


def _num(value: float | int | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    value = round(value, digits) + 0.0  # + 0.0: no "-0.000"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _sign(value: float | None, digits: int = 3) -> str:
    """The CSS class of a change: green above 0, red below, none at 0 or unknown."""
    if value is None or round(value, digits) == 0:
        return ""
    return "pos" if value > 0 else "neg"


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, sign=_sign)
    return env.get_template("report.html.j2")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --- sections: plain data for the template ----------------------------------------------------------


def _summary(stored: StoredModel, used: dict[str, Thresholds]) -> list[tuple[str, object]]:
    m, t = stored.manifest, stored.manifest.training
    return [
        ("model", stored.tag),
        ("created", m.created_at.isoformat(timespec="seconds")),
        ("backbone", f"{m.backbone.id} ({m.backbone.feature_dim} features)"),
        ("labels", len(m.labels)),
        ("images", f"{t.get('train_images', '?')} train, {t.get('validation_images', '?')} validation"),
        ("head", f"{t.get('head', '?')}, lr {t.get('lr', '?')}, {t.get('stopped', '')}"),
        ("best / last epoch", f"{m.models['best'].epoch} / {m.models['last'].epoch}"),
        ("thresholds", ", ".join(f"{w}: {th.profile}" for w, th in used.items())),
    ]


def _thresholds(inspector: Inspector, used: dict[str, Thresholds]) -> dict:
    m = inspector.manifest
    rows = []
    for j, label in enumerate(m.labels):
        cells: list[float | int | None] = [m.label_counts.get(s, {}).get(label) for s in SPLITS]
        for w in WHICH_MODELS:
            entry = m.models[w]
            cells += [entry.thresholds[j], float(used[w].values[j])]
            cells += [entry.profiles[p][j] if p in entry.profiles else None for p in PROFILE_COLUMNS]
        rows.append((label, cells))
    fallbacks = {w: m.models[w].threshold_fallbacks for w in WHICH_MODELS}
    notes = [f"{w}: {label}: {why}" for w, why_of in fallbacks.items() for label, why in why_of.items()]
    return {"rows": rows, "notes": notes}


def _statistics(inspector: Inspector, used: dict[str, Thresholds]) -> dict:
    stats = {(w, s): inspector.statistics(w, s, used[w]) for w in WHICH_MODELS for s in SPLITS}
    sections = []
    for (w, s), metrics in stats.items():
        counts = confusion(inspector.records, w, s, used[w].values)
        rows = []
        for j, (label, lm) in enumerate(metrics.per_label.items()):
            cells = [lm.support, float(used[w].values[j]), lm.precision, lm.recall, lm.f1, lm.ap]
            rows.append((label, cells + [counts[label][k] for k in ("tp", "fp", "fn", "tn")]))
        sections.append({"which": w, "split": s, "rows": rows})
    overall = [(title, [getattr(m, key) for m in stats.values()]) for key, title in GLOBAL]
    return {"columns": [f"{w} / {s}" for w, s in stats], "overall": overall, "per_label": sections}


def _charts(inspector: Inspector, used: dict[str, Thresholds]) -> list[tuple[str | None, charts.Chart]]:
    """The pooled chart, then one per label: best and last, validation (solid) and train (dashed)."""
    records = inspector.records
    got = {(w, s): curves(records, w, s, used[w].values, max_points=CURVE_POINTS) for w, s in CHART_SERIES}
    pooled = charts.pr_chart("all labels (micro)", {key: c["all"] for key, c in got.items()})
    per_label = [
        (label, charts.pr_chart(label, {key: c["per_label"][label] for key, c in got.items()}))
        for label in inspector.manifest.labels
    ]
    return [(None, pooled), *per_label]


def _mislabelled(inspector: Inspector, limit: int) -> list[dict]:
    cards = []
    for c in inspector.mislabelled("best", limit=limit)["items"]:
        try:
            image = _data_uri(inspector.image(c["split"], c["name"]), "image/jpeg")
        except RequestError:
            image = None
        cards.append({**c, "image": image})
    return cards


# --- the report -------------------------------------------------------------------------------------


def render_report(stored: StoredModel, *, profile: str | None = None, mislabelled: int = 30) -> str:
    """The report as an HTML string."""
    inspector = Inspector.from_stored(stored)
    used = {w: inspector.thresholds(w, profile=profile) for w in WHICH_MODELS}
    return _template().render(
        title=f"manylabel report: {stored.tag}",
        summary=_summary(stored, used),
        thresholds=_thresholds(inspector, used),
        statistics=_statistics(inspector, used),
        axes=charts.axes(),
        charts=_charts(inspector, used),
        diffs=[inspector.diff(s, profile=profile) for s in SPLITS],
        pairs=inspector.pairs("best", "validation", profile=profile, top=15),
        mislabelled=_mislabelled(inspector, mislabelled),
    )


def write_report(
    stored: StoredModel, output_dir: Path, *, profile: str | None = None, mislabelled: int = 30
) -> Path:
    """Write `report-{name}-{version}.html` into ``output_dir`` atomically; returns its path."""
    path = Path(output_dir) / f"report-{stored.name}-{stored.version}.html"
    atomic_write_bytes(path, render_report(stored, profile=profile, mislabelled=mislabelled).encode("utf-8"))
    logger.info("wrote the report to %s", path)
    return path
