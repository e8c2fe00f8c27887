"""Plain-text statistics tables for the terminal."""

from __future__ import annotations

from collections.abc import Callable

from service.manifest import Manifest, SplitMetrics

GLOBAL = (
    ("accuracy", "exact-match accuracy"),
    ("label_accuracy", "label accuracy"),
    ("micro_precision", "micro precision"),
    ("micro_recall", "micro recall"),
    ("micro_f1", "micro F1"),
    ("map", "mAP"),
    ("loss", "BCE loss"),
)


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def global_table(manifest: Manifest) -> str:
    cols = [(w, s) for w in ("best", "last") for s in ("train", "validation")]
    head = f"{'':22}" + "".join(f"{w + '/' + s[:5]:>14}" for w, s in cols)
    lines = [head]
    for key, title in GLOBAL:
        cells = [getattr(manifest.models[w].metrics[s], key) for w, s in cols]
        lines.append(f"{title:22}" + "".join(f"{_fmt(c):>14}" for c in cells))
    epochs = "".join(f"{manifest.models[w].epoch:>14}" for w, _ in cols)
    lines.append(f"{'epoch':22}" + epochs)
    return "\n".join(lines)


def per_label_table(metrics: SplitMetrics, thresholds: dict[str, float]) -> str:
    lines = [f"{'label':18}{'support':>8}{'thresh':>8}{'prec':>8}{'recall':>8}{'F1':>8}{'AP':>8}"]
    for label, m in metrics.per_label.items():
        lines.append(
            f"{label[:18]:18}{m.support:>8}{thresholds[label]:>8.3f}{m.precision:>8.3f}"
            f"{m.recall:>8.3f}{m.f1:>8.3f}{_fmt(m.ap):>8}"
        )
    return "\n".join(lines)


def print_summary(result, *, say: Callable[[str], None] = print) -> None:
    m: Manifest = result.manifest
    say("")
    say(f"saved {result.stored.tag} to the BentoML model store ({result.stored.path})")
    say(
        f"time: features {result.feature_seconds:.1f} s, head {result.head_seconds:.1f} s, "
        f"total {result.total_seconds:.1f} s; {result.stopped}"
    )
    say(global_table(m))
    for which in ("best", "last"):
        entry = m.models[which]
        say(f"\n{which} model (epoch {entry.epoch}), validation, thresholds from {entry.threshold_source}:")
        say(per_label_table(entry.metrics["validation"], m.thresholds(which)))
        for label, why in entry.threshold_fallbacks.items():
            say(f"  note: {label}: {why}")
