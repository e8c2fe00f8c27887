"""service.inspect.suspects: which pairs are listed (kinds, thresholds, NaN, usable, limit) and in what
order (hand-worked toys and a slow, loop-by-loop reference of the strength formula)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.inspect.suspects import MIN_GROUP, SEPARATION_RANGE, Suspect, rank, strengths

# Three images, two labels, threshold 0.5 each (fewer than MIN_GROUP per group: separation 1):
#   row  given   scores      listed
#   0    a       .9  .8      b missing (logit .8 = 1.386 past the threshold)
#   1    b       .2  .1      b wrong   (logit .1 = -2.197)
#   2    a       .7  .2      -
Y = np.array([[1, 0], [0, 1], [1, 0]], bool)
P = np.array([[0.9, 0.8], [0.2, 0.1], [0.7, 0.2]])
T = np.array([0.5, 0.5])


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_kinds_scores_and_thresholds_of_the_listed_pairs():
    got = rank(Y, P, T)
    assert got == [
        Suspect(1, 1, "wrong", score=0.1, threshold=0.5, strength=pytest.approx(-logit(0.1))),
        Suspect(0, 1, "missing", score=0.8, threshold=0.5, strength=pytest.approx(logit(0.8))),
    ]
    assert got == rank(Y, P, T, count_prior=0)  # the label-count prior is off by default


def test_label_count_prior_on_the_toy():
    # Counts (0, 1, 2 labels) = (0, 3, 0) images, smoothed over 3 values: P = 1/6, 4/6, 1/6. Fixing
    # either pair moves its image from 1 label to 0 or 2: log(1/4) each, so the order is kept.
    got = rank(Y, P, T, count_prior=1)
    assert [(s.row, s.label) for s in got] == [(1, 1), (0, 1)]
    assert got[0].strength == pytest.approx(-logit(0.1) - math.log(4))
    assert got[1].strength == pytest.approx(logit(0.8) - math.log(4))


def test_a_score_at_the_threshold_is_above_it():
    y = np.array([[1, 0]], bool)
    at = rank(y, np.array([[0.4, 0.3]]), np.array([0.4, 0.3]))
    assert [(s.label, s.kind) for s in at] == [(1, "missing")]  # given a at .4: not wrong; b at .3: missing
    below = rank(y, np.array([[np.nextafter(0.4, 0), 0.0]]), np.array([0.4, 0.3]))
    assert [(s.label, s.kind) for s in below] == [(0, "wrong")]


def test_only_pairs_across_their_own_label_threshold_are_listed():
    rng = np.random.default_rng(0)
    y, p = rng.random((40, 3)) < 0.4, rng.random((40, 3))
    t = np.array([0.2, 0.5, 0.8])
    got = rank(y, p, t)
    listed = {(s.row, s.label) for s in got}
    assert listed == {(i, j) for i in range(40) for j in range(3) if (p[i, j] >= t[j]) != y[i, j]}
    for s in got:
        assert s.threshold == t[s.label] and s.score == p[s.row, s.label]
        assert s.kind == ("wrong" if y[s.row, s.label] else "missing")


def reference_strengths(y: np.ndarray, p: np.ndarray, t: np.ndarray, count_prior: float) -> np.ndarray:
    """The module docstring's formula, one pair at a time, in plain Python."""
    n, n_labels = y.shape
    z = [[logit(min(max(p[i][j], 1e-6), 1 - 1e-6)) for j in range(n_labels)] for i in range(n)]
    weight = []
    for j in range(n_labels):
        pos = [z[i][j] for i in range(n) if y[i][j]]
        neg = [z[i][j] for i in range(n) if not y[i][j]]
        if min(len(pos), len(neg)) < MIN_GROUP:
            weight.append(1.0)
            continue
        var = lambda v: sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)  # noqa: E731
        w = (sum(pos) / len(pos) - sum(neg) / len(neg)) / (0.5 * (var(pos) + var(neg)) + 1e-6)
        weight.append(min(max(w, SEPARATION_RANGE[0]), SEPARATION_RANGE[1]))
    counts = [sum(bool(v) for v in row) for row in y]
    share = [(counts.count(c) + 1) / (n + n_labels + 1) for c in range(n_labels + 1)]
    out = np.zeros((n, n_labels))
    for i in range(n):
        for j in range(n_labels):
            margin = z[i][j] - logit(t[j])
            fixed = counts[i] - 1 if y[i][j] else counts[i] + 1
            prior = math.log(share[fixed]) - math.log(share[counts[i]])
            out[i, j] = (-margin if y[i][j] else margin) * weight[j] + count_prior * prior
    return out


@pytest.mark.parametrize("count_prior", [0.0, 1.0, 0.5])
def test_order_and_strengths_match_a_slow_reference(count_prior):
    rng = np.random.default_rng(1)
    y = rng.random((80, 4)) < np.array([0.5, 0.3, 0.1, 0.04])  # the last label: too few positives
    p = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, [0.1, 0.2, 0.3, 0.2], (80, 4)), 0.001, 0.999)
    t = np.array([0.5, 0.4, 0.6, 0.5])
    want = reference_strengths(y, p, t, count_prior)
    np.testing.assert_allclose(strengths(y, p, t, count_prior=count_prior), want, rtol=1e-9, atol=1e-9)
    got = rank(y, p, t, count_prior=count_prior)
    listed = [(i, j) for i in range(80) for j in range(4) if (p[i, j] >= t[j]) != y[i, j]]
    assert [(s.row, s.label) for s in got] == sorted(listed, key=lambda ij: (-want[ij], ij[0], ij[1]))


def test_a_well_separated_label_outranks_a_confused_one_at_the_same_margin():
    # Label 0: given positives score .9, negatives .1 (well separated); label 1: .6 vs .4.
    y = np.zeros((20, 2), bool)
    y[:10] = True
    p = np.where(y, [0.9, 0.6], [0.1, 0.4])
    p[0] = [0.3, 0.3]  # both given, both scored .3: the same margin below .5
    got = rank(y, p, np.array([0.5, 0.5]))
    assert [(s.row, s.label, s.kind) for s in got] == [(0, 0, "wrong"), (0, 1, "wrong")]
    assert got[0].strength > got[1].strength


def test_the_label_count_prior_prefers_fixes_that_make_a_usual_label_set():
    # Every image has exactly one label but row 0, which has two, and row 1, which has none.
    y = np.array([[1, 1, 0]] + [[0, 0, 0]] + [[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 6, bool)
    p = np.where(y, 0.9, 0.1)
    p[0, 1] = 0.2  # wrong on a 2-label image: removing it leaves the usual one label
    p[2, 0] = 0.2  # wrong on a 1-label image: removing it leaves none
    p[1, 2] = 0.8  # missing on the empty image
    p[3, 2] = 0.8  # missing on a 1-label image: adding it makes two
    got = [(s.row, s.label) for s in rank(y, p, np.full(3, 0.5), count_prior=1)]
    assert set(got[:2]) == {(1, 2), (0, 1)} and set(got[2:]) == {(2, 0), (3, 2)}
    default = [(s.row, s.label) for s in rank(y, p, np.full(3, 0.5))]  # off: by the labels' separation
    assert set(default[:2]) != set(got[:2])


def test_usable_drops_pairs_without_reordering_the_rest():
    rng = np.random.default_rng(2)
    y, p = rng.random((50, 3)) < 0.3, rng.random((50, 3))
    t = np.full(3, 0.5)
    full = rank(y, p, t)
    usable = np.ones_like(y)
    dropped = {(s.row, s.label) for s in full[::3]}
    for r, j in dropped:
        usable[r, j] = False
    assert rank(y, p, t, usable=usable) == [s for s in full if (s.row, s.label) not in dropped]


def test_limit_is_a_prefix():
    rng = np.random.default_rng(3)
    y, p = rng.random((30, 2)) < 0.5, rng.random((30, 2))
    full = rank(y, p, np.full(2, 0.5))
    assert len(full) > 5
    assert rank(y, p, np.full(2, 0.5), limit=5) == full[:5]
    assert rank(y, p, np.full(2, 0.5), limit=0) == []
    assert rank(y, p, np.full(2, 0.5), limit=10_000) == full


def test_nan_scores_and_thresholds_are_never_listed_and_leave_the_rest_alone():
    p = P.copy()
    p[1, 1] = np.nan  # the wrong suspect is unscored
    got = rank(Y, p, T)
    assert [(s.row, s.label, s.kind) for s in got] == [(0, 1, "missing")]
    assert got[0].strength == pytest.approx(logit(0.8))
    assert rank(Y, P, np.array([0.5, np.nan])) == []  # label b has no threshold; a has no suspect
    assert rank(Y, np.full(P.shape, np.nan), T) == []


def test_no_suspects():
    assert rank(Y, np.where(Y, 0.9, 0.1), T) == []
    assert rank(np.zeros((0, 2), bool), np.zeros((0, 2)), T) == []
    assert rank(np.zeros((3, 0), bool), np.zeros((3, 0)), np.zeros(0)) == []


def test_ties_go_by_row_then_label():
    y = np.zeros((3, 2), bool)
    p = np.full((3, 2), 0.8)
    got = rank(y, p, np.full(2, 0.5))
    assert [(s.row, s.label) for s in got] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
