"""`write_report`: one self-contained HTML file about a stored model, readable offline.

Everything is inline: CSS in a <style> block, PR-curve PNGs and thumbnails as base64 data URIs, no
script, no external asset. Numbers come from `service.inspect` on the stored scores, at the thresholds
in force (the custom ones once set, else the optimised ones) unless a profile is given.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
from pathlib import Path

from service.inspect import SPLITS, InspectError, confusion, curves
from service.inspector import Inspector
from service.manifest import WHICH_MODELS, atomic_write_bytes
from service.store import StoredModel
from training.plots import plot_pr_curves
from training.report import GLOBAL

logger = logging.getLogger(__name__)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{padding:2px 8px;border-bottom:1px solid #eee}
th{text-align:left;background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pos{color:#176f2c}.neg{color:#b3261e}.note{color:#666;font-size:.9em}
.curves{display:flex;flex-wrap:wrap;gap:1em}.curves figure{margin:0}.curves img{width:540px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{width:200px;font-size:.85em}
.card img{width:192px;height:192px;object-fit:contain;background:#eee}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | int | None, digits: int = 3, *, signed: bool = False) -> str:
    """A right-aligned number cell; signed ones are green above 0 and red below."""
    if value is None:
        return '<td class="n">-</td>'
    if isinstance(value, int):
        text = str(value)
    else:
        value = round(value, digits) + 0.0  # + 0.0: no "-0.000"
        text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    cls = "n" + ((" pos" if value > 0 else " neg") if signed and value else "")
    return f'<td class="{cls}">{text}</td>'


def _table(head: list[str] | None, rows: list[str]) -> str:
    th = f"<tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>" if head else ""
    return f"<table>{th}{''.join(f'<tr>{r}</tr>' for r in rows)}</table>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --- sections ---------------------------------------------------------------------------------------


def _summary(stored: StoredModel, profiles: dict[str, str]) -> str:
    m = stored.manifest
    t = m.training
    items = [
        ("model", stored.tag),
        ("created", m.created_at.isoformat(timespec="seconds")),
        ("backbone", f"{m.backbone.id} ({m.backbone.feature_dim} features)"),
        ("labels", len(m.labels)),
        ("images", f"{t.get('train_images', '?')} train, {t.get('validation_images', '?')} validation"),
        ("head", f"{t.get('head', '?')}, lr {t.get('lr', '?')}, {t.get('stopped', '')}"),
        ("best / last epoch", f"{m.models['best'].epoch} / {m.models['last'].epoch}"),
        ("thresholds", ", ".join(f"{w}: {p}" for w, p in profiles.items())),
    ]
    return _table(None, [f"<th>{_e(k)}</th><td>{_e(v)}</td>" for k, v in items])


PROFILE_COLS = ("high_precision", "high_recall")


def _thresholds(inspector: Inspector, used: dict) -> str:
    m = inspector.manifest
    head = ["label", "train +", "val +"]
    head += [f"{w} {k}" for w in WHICH_MODELS for k in ("optimised", "in use", "high prec.", "high rec.")]
    rows = []
    for j, label in enumerate(m.labels):
        cells = [f"<td>{_e(label)}</td>"] + [_num(m.label_counts.get(s, {}).get(label)) for s in SPLITS]
        for w in WHICH_MODELS:
            entry = m.models[w]
            cells += [_num(entry.thresholds[j]), _num(float(used[w].values[j]))]
            cells += [_num(entry.profiles[p][j] if p in entry.profiles else None) for p in PROFILE_COLS]
        rows.append("".join(cells))
    notes = [
        f"{w}: {lab}: {why}" for w in WHICH_MODELS for lab, why in m.models[w].threshold_fallbacks.items()
    ]
    return _table(head, rows) + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _per_label(inspector: Inspector, which: str, split: str, t, metrics) -> str:
    conf = confusion(inspector.records, which, split, t.values)
    rows = []
    for j, (label, lm) in enumerate(metrics.per_label.items()):
        cells = [lm.support, float(t.values[j]), lm.precision, lm.recall, lm.f1, lm.ap]
        cells += [conf[label][k] for k in ("tp", "fp", "fn", "tn")]
        rows.append(f"<td>{_e(label)}</td>" + "".join(_num(c) for c in cells))
    head = ["label", "support", "threshold", "precision", "recall", "F1", "AP", "TP", "FP", "FN", "TN"]
    return f"<h3>{_e(which)} model, {_e(split)}</h3>" + _table(head, rows)


def _statistics(inspector: Inspector, used: dict) -> str:
    stats = {(w, s): inspector.statistics(w, s, used[w]) for w in WHICH_MODELS for s in SPLITS}
    head = ["", *(f"{w} / {s}" for w, s in stats)]
    rows = [
        f"<th>{_e(title)}</th>" + "".join(_num(getattr(m, key)) for m in stats.values())
        for key, title in GLOBAL
    ]
    per_label = [_per_label(inspector, w, s, used[w], m) for (w, s), m in stats.items()]
    return _table(head, rows) + "".join(per_label)


def _curves(inspector: Inspector, used: dict) -> str:
    figures = []
    with tempfile.TemporaryDirectory(prefix="manylabel-report-") as tmp:
        for w in WHICH_MODELS:
            for s in SPLITS:
                c = curves(inspector.records, w, s, used[w].values)
                title = f"{inspector.tag} — {w} model, {s}"
                path = plot_pr_curves(c, Path(tmp) / f"{w}_{s}.png", title=title)
                uri = _data_uri(path.read_bytes(), "image/png")
                figures.append(f'<figure><img alt="PR curves {w} {s}" src="{uri}"></figure>')
    return f'<div class="curves">{"".join(figures)}</div>'


def _diff(inspector: Inspector, profile: str | None) -> str:
    parts = []
    for s in SPLITS:
        d = inspector.diff(s, profile=profile)
        head = [
            "label",
            "AP best",
            "AP last",
            "ΔAP",
            "F1 best",
            "F1 last",
            "ΔF1",
            "changed",
            "fixed",
            "broken",
        ]
        rows = []
        for label, v in d["per_label"].items():
            cells = [_num(v[k]) for k in ("ap_best", "ap_last")] + [_num(v["delta_ap"], signed=True)]
            cells += [_num(v[k]) for k in ("f1_best", "f1_last")] + [_num(v["delta_f1"], signed=True)]
            cells += [_num(v["changed"]), f"<td>{_e(', '.join(v['fixed']))}</td>"]
            rows.append(f"<td>{_e(label)}</td>" + "".join(cells) + f"<td>{_e(', '.join(v['broken']))}</td>")
        i = d["images"]
        parts.append(
            f"<h3>{_e(s)}</h3>"
            + _table(head, rows)
            + f"<p>images right with last but wrong with best: {i['fixed']}, the reverse: {i['broken']} "
            f"(changes are last − best)</p>"
        )
    return "".join(parts)


def _pairs(inspector: Inspector, profile: str | None) -> str:
    p = inspector.pairs("best", "validation", profile=profile, top=15)
    confused = [
        f"<td>{_e(c['true'])}</td><td>{_e(c['predicted'])}</td>{_num(c['images'])}" for c in p["confused"]
    ]
    together = [
        f"<td>{_e(' + '.join(c['labels']))}</td>{_num(c['images'])}{_num(c['jaccard'])}"
        for c in p["co_occurring"]
    ]
    return (
        "<h3>confused (best model, validation): true label missed while the other is wrongly given</h3>"
        + (_table(["true", "predicted instead", "images"], confused) if confused else "<p>none</p>")
        + "<h3>co-occurring in the ground truth (validation)</h3>"
        + (_table(["labels", "images", "Jaccard"], together) if together else "<p>none</p>")
    )


def _mislabelled(inspector: Inspector, limit: int) -> str:
    cards = []
    for c in inspector.mislabelled("best", limit=limit)["items"]:
        try:
            img = f'<img alt="" src="{_data_uri(inspector.image(c["split"], c["name"]), "image/jpeg")}">'
        except InspectError:
            img = "<div>(no thumbnail)</div>"
        cards.append(
            f'<div class="card">{img}<div><b>{_e(c["suggestion"])}</b> {_e(c["label"])}</div>'
            f"<div>score {c['score']:.3f} ({_e(c['source'])})</div>"
            f"<div>{_e(c['split'])}: {_e(c['name'])}</div></div>"
        )
    if not cards:
        return "<p>no image's score contradicts its labels by 0.5 or more</p>"
    return (
        '<p class="note">Scores the model did not learn the image from (out-of-fold for train images, '
        "the model's score for validation images), ranked by |label − score|.</p>"
        f'<div class="grid">{"".join(cards)}</div>'
    )


# --- the report -------------------------------------------------------------------------------------


def render_report(stored: StoredModel, *, profile: str | None = None, mislabelled: int = 30) -> str:
    """The report as an HTML string."""
    inspector = Inspector.from_stored(stored)
    used = {w: inspector.thresholds(w, profile=profile) for w in WHICH_MODELS}
    sections = [
        ("Model", _summary(stored, {w: t.profile for w, t in used.items()})),
        ("Thresholds", _thresholds(inspector, used)),
        ("Statistics", _statistics(inspector, used)),
        ("Precision-recall curves", _curves(inspector, used)),
        ("Best vs last", _diff(inspector, profile)),
        ("Label pairs", _pairs(inspector, profile)),
        ("Likely mislabelled images", _mislabelled(inspector, mislabelled)),
    ]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    title = f"manylabel report: {stored.tag}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>\n"
    )


def write_report(
    stored: StoredModel, output_dir: Path, *, profile: str | None = None, mislabelled: int = 30
) -> Path:
    """Write `report-{name}-{version}.html` into ``output_dir`` atomically; returns its path."""
    path = Path(output_dir) / f"report-{stored.name}-{stored.version}.html"
    atomic_write_bytes(path, render_report(stored, profile=profile, mislabelled=mislabelled).encode("utf-8"))
    logger.info("wrote the report to %s", path)
    return path
