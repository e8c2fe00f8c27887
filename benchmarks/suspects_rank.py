"""The orders `benchmarks/suspects.py` compares, and their precision@k / recall@2K against the flips.

Each order is a list of (row, label) pairs or of rows, most suspicious first, computed from the same
given labels `y` (n, L), held-out scores `p` (n, L) and thresholds `t` (L,). cleanlab is imported only
here, inside the functions, so the rest of the benchmark can say when it is missing.
"""

from __future__ import annotations

import numpy as np

from service.inspect import suspects

KS = (50, 100)


def margin_v1(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The first version's strength: the logit margin past the threshold, > 0 on the wrong side."""
    return suspects.margins(y, p, t)


def pair_order(strength: np.ndarray, keep: np.ndarray) -> list[tuple[int, int]]:
    r, j = np.nonzero(keep & np.isfinite(strength))
    order = np.lexsort((j, r, -strength[r, j]))
    return [(int(r[k]), int(j[k])) for k in order]


def image_order(pairs: list[tuple[int, int]]) -> list[int]:
    return list(dict.fromkeys(r for r, _ in pairs))


def rankings(d: dict) -> dict[str, dict[str, list]]:
    """{level: {method: order}}, level "image" (rows) and "pair" ((row, label))."""
    y, p, t = d["y"].astype(bool), d["p"], d["thresholds"]
    v1 = margin_v1(y, p, t)
    gap = np.abs(y - np.clip(p, 0.0, 1.0))
    pairs = {
        "ours": [(s.row, s.label) for s in suspects.rank(y, p, t)],
        "ours + label-count prior": [(s.row, s.label) for s in suspects.rank(y, p, t, count_prior=1)],
        "ours v1 (logit margin)": pair_order(v1, v1 > 0),
        "gap = abs(given - score) (mislabel_candidates)": pair_order(gap, gap >= 0.5),
    }
    images = {name: image_order(order) for name, order in pairs.items()}
    images.update(cleanlab_images(y, p))
    per_class = cleanlab_per_class(y, p)
    pairs["cleanlab per-class quality"] = pair_order(-per_class, np.ones_like(y))
    return {"image": images, "pair": pairs}


def _cl_labels(y: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in y]


def cleanlab_images(y: np.ndarray, p: np.ndarray) -> dict[str, list[int]]:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    quality = get_label_quality_scores(_cl_labels(y), p)
    issues = find_label_issues(_cl_labels(y), p, return_indices_ranked_by="self_confidence", n_jobs=1)
    return {
        "cleanlab get_label_quality_scores": np.argsort(quality, kind="stable").tolist(),
        "cleanlab find_label_issues": [int(i) for i in issues],
    }


def cleanlab_per_class(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    from cleanlab.multilabel_classification.rank import get_label_quality_scores_per_class

    quality = np.asarray(get_label_quality_scores_per_class(_cl_labels(y), p))
    return quality if quality.shape == y.shape else quality.T  # (n, L); older releases gave L arrays


def scores_of(order: list, truth: set, n_true: int) -> dict[str, float]:
    hits = np.array([o in truth for o in order], bool)
    out = {f"p@{k}": float(hits[:k].sum() / k) for k in KS}
    out["p@K"] = float(hits[:n_true].sum() / n_true)
    out["recall@2K"] = float(hits[: 2 * n_true].sum() / n_true)
    out["listed"] = len(order)
    out["K"] = n_true
    return out


def evaluate(d: dict) -> dict[str, dict[str, dict]]:
    truth = d["truth"]
    true_pairs = {(int(r), int(j)) for r, j in zip(*np.nonzero(truth), strict=True)}
    true_rows = {r for r, _ in true_pairs}
    out: dict[str, dict[str, dict]] = {}
    for level, methods in rankings(d).items():
        target = true_rows if level == "image" else true_pairs
        out[level] = {m: scores_of(order, target, len(target)) for m, order in methods.items()}
    return out
