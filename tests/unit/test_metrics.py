"""service.metrics: hand-worked toys, then scikit-learn as the reference on random data."""

from __future__ import annotations

import doctest
import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from service.metrics import (
    average_precision,
    image_correct,
    label_correct,
    pr_curves,
    precision_recall_curve,
    split_metrics,
)

# --- hand-worked toys ----------------------------------------------------------------------------

# Labels a, b, c at thresholds 0.5, 0.3, 0.5. Decisions (score >= threshold) and errors:
#   r0 [1,0,0] scores [0.9,0.2,0.1] -> pred [1,0,0]  all right
#   r1 [1,1,0] scores [0.6,0.1,0.2] -> pred [1,0,0]  b missed (FN)
#   r2 [0,1,0] scores [0.4,0.8,0.6] -> pred [0,1,1]  c false alarm (FP)
#   r3 [0,0,0] scores [0.2,0.3,0.4] -> pred [0,1,0]  b FP (0.3 >= 0.3: equal counts as above)
#   r4 [1,0,0] scores [0.3,0.5,0.0] -> pred [0,1,0]  a FN, b FP
TOY_TRUE = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
TOY_SCORE = np.array(
    [[0.9, 0.2, 0.1], [0.6, 0.1, 0.2], [0.4, 0.8, 0.6], [0.2, 0.3, 0.4], [0.3, 0.5, 0.0]],
)
TOY_TH = np.array([0.5, 0.3, 0.5])
TOY_LABELS = ["a", "b", "c"]


def test_label_correct_four_cases() -> None:
    # positive above: right; positive below: wrong; negative above: wrong; negative below: right
    y_true = np.array([[1], [1], [0], [0]])
    y_score = np.array([[0.9], [0.2], [0.7], [0.1]])
    got = label_correct(y_true, y_score, np.array([0.5]))
    assert got[:, 0].tolist() == [True, False, False, True]


def test_score_equal_to_threshold_is_above() -> None:
    got = label_correct(np.array([[1], [0]]), np.array([[0.5], [0.5]]), np.array([0.5]))
    assert got[:, 0].tolist() == [True, False]


def test_image_incorrect_if_any_label_is() -> None:
    assert image_correct(TOY_TRUE, TOY_SCORE, TOY_TH).tolist() == [True, False, False, False, False]
    # one wrong label out of three is enough
    one_wrong = image_correct(np.array([[1, 1, 0]]), np.array([[0.9, 0.9, 0.9]]), np.array([0.5] * 3))
    assert one_wrong.tolist() == [False]


def test_split_metrics_toy() -> None:
    m = split_metrics(TOY_TRUE, TOY_SCORE, TOY_TH, TOY_LABELS, loss=0.25)
    assert m.images == 5
    assert m.accuracy == pytest.approx(1 / 5)  # only r0 is all right
    assert m.label_accuracy == pytest.approx(10 / 15)  # 5 wrong decisions out of 15
    # pooled: TP 3 (a r0, a r1, b r2), FP 3 (c r2, b r3, b r4), FN 2 (b r1, a r4)
    assert m.micro_precision == pytest.approx(3 / 6)
    assert m.micro_recall == pytest.approx(3 / 5)
    assert m.micro_f1 == pytest.approx(6 / 11)  # 2TP / (2TP + FP + FN)
    a, b, c = (m.per_label[k] for k in TOY_LABELS)
    # a: TP 2, FP 0, FN 1
    assert (a.support, a.precision, a.recall, a.f1) == (3, 1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    # a ranked: 0.9+ 0.6+ 0.4- 0.3+ 0.2-  -> precision at each positive 1, 1, 3/4
    assert a.ap == pytest.approx((1 + 1 + 0.75) / 3)
    # b: TP 1, FP 2, FN 1 -> F1 2/(2+2+1)
    assert (b.support, b.precision, b.recall, b.f1) == (2, pytest.approx(1 / 3), 0.5, pytest.approx(0.4))
    # b ranked: 0.8+ 0.5- 0.3- 0.2- 0.1+ -> precision at each positive 1, 2/5
    assert b.ap == pytest.approx((1 + 0.4) / 2)
    # c: no positive, one FP: precision 0/1, recall 0/0 := 0, F1 0/1; AP undefined
    assert (c.support, c.precision, c.recall, c.f1, c.ap) == (0, 0.0, 0.0, 0.0, None)
    assert m.map == pytest.approx(((1 + 1 + 0.75) / 3 + 0.7) / 2)  # c is left out
    assert m.loss == 0.25


def test_zero_division_is_zero() -> None:
    # nothing predicted and nothing true: every ratio is 0/0
    m = split_metrics(np.zeros((4, 1)), np.full((4, 1), 0.1), np.array([0.5]), ["x"])
    assert (m.micro_precision, m.micro_recall, m.micro_f1, m.map) == (0.0, 0.0, 0.0, None)
    assert (m.accuracy, m.label_accuracy) == (1.0, 1.0)


def test_average_precision_groups_ties() -> None:
    # the three 0.5 scores form one cut: TP 2, FP 1 -> precision 2/3 for the whole recall 0 -> 1 step;
    # ranking the tied items one by one would give (1 + 2/3) / 2 or (1/2 + 2/3) / 2 instead
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.1])) == pytest.approx(2 / 3)
    assert average_precision(np.array([0, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.1])) is None


def test_precision_recall_curve_toy() -> None:
    # ranked 0.8+ 0.4- 0.35+ 0.1-: cuts from the lowest up (thresholds ascending)
    p, r, t = precision_recall_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert p.tolist() == pytest.approx([2 / 4, 2 / 3, 1 / 2, 1 / 1, 1.0])
    assert r.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert t.tolist() == [0.1, 0.35, 0.4, 0.8]


@pytest.mark.parametrize(
    ("y_true", "y_score"),
    [
        (np.array([[1, 2]]), np.array([[0.1, 0.2]])),  # not 0/1
        (np.array([[1, 0]]), np.array([[0.1, np.nan]])),  # not finite
        (np.array([[1, 0]]), np.array([[0.1, 1.5]])),  # outside [0, 1]
        (np.array([[1, 0]]), np.array([[0.1, 0.2, 0.3]])),  # shapes differ
    ],
)
def test_bad_input_raises(y_true: np.ndarray, y_score: np.ndarray) -> None:
    with pytest.raises(ValueError):
        split_metrics(y_true, y_score, np.full(y_true.shape[1], 0.5), ["a", "b"])


# --- against scikit-learn ------------------------------------------------------------------------


def _random_case(seed: int, n: int = 60, n_labels: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.random((n, n_labels)) < rng.uniform(0.1, 0.6, n_labels)
    y_true[:, -1] = False  # a label with no positive in the split
    y_score = np.clip(0.35 * y_true + rng.random((n, n_labels)) * 0.75, 0, 1)
    if seed % 2:
        y_score = y_score.round(1)  # many ties
    return y_true, y_score, rng.uniform(0.2, 0.8, n_labels)


@pytest.mark.parametrize("seed", range(8))
def test_curves_and_ap_match_sklearn(seed: int) -> None:
    y_true, y_score, _ = _random_case(seed)
    for j in range(y_true.shape[1] - 1):
        ours = precision_recall_curve(y_true[:, j], y_score[:, j])
        theirs = skm.precision_recall_curve(y_true[:, j], y_score[:, j])
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        expected = skm.average_precision_score(y_true[:, j], y_score[:, j])
        assert average_precision(y_true[:, j], y_score[:, j]) == pytest.approx(expected, rel=1e-12)


def test_curve_without_positives_matches_sklearn() -> None:
    y_true, y_score, _ = _random_case(1)
    ours = precision_recall_curve(y_true[:, -1], y_score[:, -1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that recall is set to 1
        theirs = skm.precision_recall_curve(y_true[:, -1], y_score[:, -1])
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("seed", range(8))
def test_split_metrics_match_sklearn(seed: int) -> None:
    y_true, y_score, th = _random_case(seed)
    labels = [f"l{j}" for j in range(y_true.shape[1])]
    m = split_metrics(y_true, y_score, th, labels)
    pred = y_score >= th
    p, r, f, support = skm.precision_recall_fscore_support(y_true, pred, average=None, zero_division=0)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(y_true, pred, average="micro", zero_division=0)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y_true, pred))
    assert m.label_accuracy == pytest.approx(1 - skm.hamming_loss(y_true, pred))
    assert (m.micro_precision, m.micro_recall, m.micro_f1) == pytest.approx((mp, mr, mf))
    for j, name in enumerate(labels):
        got = m.per_label[name]
        assert got.support == support[j]
        assert (got.precision, got.recall, got.f1) == pytest.approx((p[j], r[j], f[j]))
    aps = [skm.average_precision_score(y_true[:, j], y_score[:, j]) for j in range(len(labels) - 1)]
    assert [m.per_label[k].ap for k in labels[:-1]] == pytest.approx(aps)
    assert m.per_label[labels[-1]].ap is None
    assert m.map == pytest.approx(np.mean(aps))


# --- PR curves for reports -----------------------------------------------------------------------


def _point_on(curve: dict, recall: float, precision: float) -> bool:
    pairs = zip(curve["recall"], curve["precision"], strict=True)
    return any(r == recall and p == precision for r, p in pairs)


def test_pr_curves_downsampled_keep_ends_and_operating_point() -> None:
    y_true, y_score, th = _random_case(0, n=2000, n_labels=3)
    labels = ["a", "b", "none"]
    curves = pr_curves(y_true, y_score, labels, th, max_points=20)
    json.loads(json.dumps(curves))  # JSON-ready: plain floats, lists, None
    m = split_metrics(y_true, y_score, th, labels)
    for name in labels:
        curve = curves["per_label"][name]
        assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) <= 20
        assert (
            curve["thresholds"][-1] is None and curve["recall"][-1] == 0.0 and curve["precision"][-1] == 1.0
        )
        assert curve["ap"] == m.per_label[name].ap
        op = curve["operating_point"]
        assert op["threshold"] == th[labels.index(name)]
        assert (op["precision"], op["recall"], op["f1"]) == pytest.approx(
            (m.per_label[name].precision, m.per_label[name].recall, m.per_label[name].f1)
        )
        if name != "none":
            assert curve["recall"][0] == 1.0  # the predict-everything end
            assert _point_on(curve, op["recall"], op["precision"])
    pooled = curves["all"]["operating_point"]
    assert pooled["threshold"] is None  # thresholds differ per label
    assert (pooled["precision"], pooled["recall"], pooled["f1"]) == pytest.approx(
        (m.micro_precision, m.micro_recall, m.micro_f1)
    )
    assert curves["all"]["ap"] == pytest.approx(skm.average_precision_score(y_true.ravel(), y_score.ravel()))


def test_pr_curves_small_is_complete_and_shared_threshold_is_reported() -> None:
    curves = pr_curves(TOY_TRUE[:, :2], TOY_SCORE[:, :2], ["a", "b"], np.array([0.5, 0.5]))
    a = curves["per_label"]["a"]
    # a: cuts 0.2 0.3 0.4 0.6 0.9 + the nothing-predicted end: all six points kept
    assert a["thresholds"] == [0.2, 0.3, 0.4, 0.6, 0.9, None]
    assert curves["all"]["operating_point"]["threshold"] == 0.5
    assert _point_on(
        curves["all"], **{k: curves["all"]["operating_point"][k] for k in ("recall", "precision")}
    )


def test_docstring_examples() -> None:
    import service.metrics

    assert doctest.testmod(service.metrics).failed == 0
