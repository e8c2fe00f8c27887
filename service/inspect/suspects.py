"""Suspected label errors: (image, label) pairs whose held-out score contradicts the given label.

Pure numpy over scores the model did not learn the image from (out-of-fold for training images, the
model's own for validation images). Two kinds:
  * ``missing``: the label is not given but the image scores at or above the label's threshold;
  * ``wrong``: the label is given but the image scores below it.
Which pairs are listed is the threshold's call alone. They are ordered by ``strength`` (larger =
more suspicious), the margin past the threshold in logit units times the label's *separation*: the
mean logit of its given positives minus that of its given negatives, over their pooled variance,
which is the slope of the log-likelihood ratio of two equal-variance Gaussians, so the strength reads
as nats of evidence, counted from the threshold, that the given label is the error. A contradiction on
a label the model separates well counts more than one on a label it confuses, where most
contradictions are the model's own mistakes.

`benchmarks/suspects.py` measures the order on planted flips against cleanlab's on the same scores
(`benchmarks/README.md`, *Suspected label errors*). Against the plain logit margin, separation
raised precision of the top k in all four settings measured (two dev sets; single flips and class
swaps). ``count_prior`` adds a label-count prior, log P(c') - log P(c) for the image's number of
given labels c and c' after the fix: it helped where each image got one added or deleted label
(an unusual count) and hurt where errors keep the count (a swapped class), so it is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-6
KINDS = ("missing", "wrong")
MIN_GROUP = 5  # fewer given positives (or negatives) with a score: the label's separation is taken as 1
SEPARATION_RANGE = (0.1, 10.0)  # a label the model does not separate still lists its pairs, low down


@dataclass(frozen=True)
class Suspect:
    row: int  # row of `y` / `scores`
    label: int  # column
    kind: str  # "missing" | "wrong"
    score: float
    threshold: float
    strength: float  # larger = more suspicious


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def margins(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, L) logit margin of the score past the threshold, signed so that > 0 contradicts the label.

    NaN where the score or the threshold is NaN.
    """
    margin = _logit(np.asarray(scores, dtype=np.float64)) - _logit(np.asarray(thresholds, dtype=np.float64))
    return np.where(np.asarray(y, dtype=bool), -margin, margin)


def contradicted(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, L) bool: the pairs listed as suspects (above = ``score >= threshold``; NaN is never listed)."""
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        above = scores >= thresholds
    return (above != np.asarray(y, dtype=bool)) & np.isfinite(scores) & np.isfinite(thresholds)


def separation(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(L,) (mean logit of given positives - of given negatives) / pooled variance, over finite scores.

    1.0 for a label with fewer than `MIN_GROUP` scored positives or negatives; clipped to
    `SEPARATION_RANGE` (a label scored no better than chance gets the low end, not a negative weight).

    >>> y = np.array([[1], [1], [0], [0]], bool)
    >>> separation(y, np.array([[0.9], [0.8], [0.2], [0.1]]))  # MIN_GROUP: too few to estimate
    array([1.])
    """
    y = np.asarray(y, dtype=bool)
    z = _logit(np.asarray(scores, dtype=np.float64))
    out = np.ones(y.shape[1])
    for j in range(y.shape[1]):
        ok = np.isfinite(z[:, j])
        pos, neg = z[ok & y[:, j], j], z[ok & ~y[:, j], j]
        if min(len(pos), len(neg)) >= MIN_GROUP:
            pooled = 0.5 * (pos.var() + neg.var()) + EPS
            out[j] = np.clip((pos.mean() - neg.mean()) / pooled, *SEPARATION_RANGE)
    return out


def count_log_ratio(y: np.ndarray) -> np.ndarray:
    """(n, L) log P(c') - log P(c): how much more common the image's label count is after the fix.

    c' = c + 1 for a label not given (fixing a missing label), c - 1 for a given one; P is the share of
    images with that many labels, Laplace-smoothed over the L + 1 possible counts.

    >>> count_log_ratio(np.array([[1, 0], [1, 0], [1, 1]], bool)).round(2)  # counts 1, 1, 2
    array([[-1.1 , -0.41],
           [-1.1 , -0.41],
           [ 0.41,  0.41]])
    """
    y = np.asarray(y, dtype=bool)
    n, n_labels = y.shape
    count = y.sum(1)
    log_p = np.log((np.bincount(count, minlength=n_labels + 1) + 1.0) / (n + n_labels + 1))
    fixed = np.where(y, count[:, None] - 1, count[:, None] + 1).clip(0, n_labels)
    return log_p[fixed] - log_p[count][:, None]


def strengths(
    y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, *, count_prior: float = 0.0
) -> np.ndarray:
    """(n, L) suspicion of each pair (the module docstring): larger = more likely a label error.

    ``count_prior`` > 0 adds that many times `count_log_ratio`.
    """
    y = np.asarray(y, dtype=bool)
    s = margins(y, scores, thresholds) * separation(y, scores)
    if count_prior:
        s = s + count_prior * count_log_ratio(y)
    return s


def rank(
    y: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    *,
    usable: np.ndarray | None = None,
    limit: int | None = None,
    count_prior: float = 0.0,
) -> list[Suspect]:
    """The suspects, most suspicious first; `usable` (n, L) bool drops pairs (decided, unscored).

    y: (n, L) given labels; scores: (n, L) held-out scores in [0, 1], NaN = unscored (never listed);
    thresholds: (L,). A pair is listed when its score is on the other side of its label's threshold
    (``score >= threshold`` is above); ties in strength go by row, then label. ``count_prior``: weight
    of the label-count prior (`count_log_ratio`; 0, the default, orders by the score evidence
    alone). Statistics (separation, label counts) use every row, so `usable` never changes the order
    of the pairs it keeps.

    >>> y = np.array([[1, 0], [0, 1], [1, 0]], bool)
    >>> p = np.array([[0.9, 0.8], [0.2, 0.1], [0.7, 0.2]])
    >>> [(s.row, s.label, s.kind) for s in rank(y, p, np.array([0.5, 0.5]))]
    [(1, 1, 'wrong'), (0, 1, 'missing')]
    """
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    s = strengths(y, scores, thresholds, count_prior=count_prior)
    keep = contradicted(y, scores, thresholds) & np.isfinite(s)
    if usable is not None:
        keep &= np.asarray(usable, dtype=bool)
    r, j = np.nonzero(keep)
    order = np.lexsort((j, r, -s[r, j]))
    if limit is not None:
        order = order[: max(limit, 0)]
    return [
        Suspect(
            row=int(r[k]),
            label=int(j[k]),
            kind="wrong" if y[r[k], j[k]] else "missing",
            score=float(scores[r[k], j[k]]),
            threshold=float(thresholds[j[k]]),
            strength=float(s[r[k], j[k]]),
        )
        for k in order
    ]
