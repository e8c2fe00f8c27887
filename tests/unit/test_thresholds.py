"""training.threshold_search: hand-worked cuts, a brute-force oracle, fallbacks, profiles and speed."""

from __future__ import annotations

import doctest
import logging

import numpy as np
import pytest

from training.threshold_search import (
    best_f1_threshold,
    f1_thresholds,
    target_precision_thresholds,
    target_recall_thresholds,
)

# --- a slow, obviously-correct reference ---------------------------------------------------------


def _f1(y_true: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = int((pred & y_true).sum()), int((pred & ~y_true).sum()), int((~pred & y_true).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _oracle_f1(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Try every distinct score as the threshold (plus predicting nothing) and keep the best F1."""
    return max([0.0] + [_f1(y_true, y_score >= u) for u in np.unique(y_score)])


def _rate(y_true: np.ndarray, pred: np.ndarray, kind: str) -> float:
    tp = int((pred & y_true).sum())
    den = int(pred.sum()) if kind == "precision" else int(y_true.sum())
    return tp / den if den else 0.0


def _random_binary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 40))
    kind = rng.integers(0, 5)
    y_true = {0: np.ones(n), 1: np.zeros(n)}.get(kind, rng.random(n) < rng.uniform(0.05, 0.9)).astype(bool)
    y_score = np.clip(0.3 * y_true + 0.8 * rng.random(n), 0, 1)
    if rng.random() < 0.5:
        y_score = y_score.round(1)  # ties
    return y_true, y_score


# --- best_f1_threshold ---------------------------------------------------------------------------


def test_best_f1_threshold_toy_with_ties() -> None:
    # one cut at 0.5 holds three samples (TP 2, FP 1): F1 4/5; cutting at 0.1 gives 4/6
    threshold, f1 = best_f1_threshold(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.1]))
    assert (threshold, f1) == (pytest.approx(0.3), pytest.approx(0.8))  # halfway between 0.5 and 0.1


@pytest.mark.parametrize(
    ("y_score", "expected"),
    [
        ([0.5, 0.6, 0.9], 0.45),  # all positive: below the lowest score by half the gap above it
        ([0.2, 0.6, 0.9], 0.0),  # same rule, clipped at 0
        ([0.4, 0.4, 0.4], 0.2),  # one distinct score: half of it
    ],
)
def test_predict_everything_threshold(y_score: list[float], expected: float) -> None:
    threshold, f1 = best_f1_threshold(np.ones(3, dtype=bool), np.array(y_score))
    assert (threshold, f1) == (pytest.approx(expected), 1.0)


def test_all_negative_predicts_nothing() -> None:
    threshold, f1 = best_f1_threshold(np.zeros(2, dtype=bool), np.array([0.2, 0.7]))
    assert (threshold, f1) == (pytest.approx(0.85), 0.0)


def test_adjacent_scores_still_split() -> None:
    # no double between these two: the midpoint rounds onto one of them and must not include the lower
    high, low = 0.3, np.nextafter(0.3, 0.0)  # (high + low) / 2 rounds to low here
    threshold, f1 = best_f1_threshold(np.array([1, 0]), np.array([high, low]))
    assert f1 == 1.0 and low < threshold <= high


def test_best_f1_threshold_matches_oracle() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        y_true, y_score = _random_binary(rng)
        threshold, f1 = best_f1_threshold(y_true, y_score)
        assert f1 == _oracle_f1(y_true, y_score)
        assert 0.0 <= threshold <= 1.0
        assert _f1(y_true, y_score >= threshold) == f1  # the threshold reproduces what it reports


# --- f1_thresholds and fallbacks -----------------------------------------------------------------


def test_f1_thresholds_records_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    y_score = rng.random((30, 4))
    y_true = y_score + rng.normal(0, 0.2, y_score.shape) > 0.5
    y_true[:, 1] = False
    y_true[:2, 1] = True  # 2 positives
    y_true[:, 2] = True  # no negatives
    y_true[:, 3] = False  # no positives
    labels = ["ok", "rare", "everywhere", "never"]
    with caplog.at_level(logging.WARNING, logger="training.threshold_search"):
        result = f1_thresholds(y_true, y_score, labels, min_positives=3, fallback=0.5)
    assert result.fallbacks == {
        "rare": "2 positives < 3: fixed 0.5",
        "everywhere": "no negatives: fixed 0.5",
        "never": "0 positives < 3: fixed 0.5",
    }
    assert result.values[1:].tolist() == [0.5, 0.5, 0.5]
    assert result.values[0] == best_f1_threshold(y_true[:, 0], y_score[:, 0])[0]
    assert sum("fixed 0.5" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize("bad", [{"min_positives": 0}, {"fallback": 1.5}])
def test_f1_thresholds_rejects_bad_options(bad: dict) -> None:
    with pytest.raises(ValueError):
        f1_thresholds(np.ones((4, 1)), np.ones((4, 1)), ["a"], **bad)


# --- profiles ------------------------------------------------------------------------------------


def _profile_case(seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y_true = rng.random((200, 6)) < 0.3
    y_score = np.clip(0.25 * y_true + 0.75 * rng.random((200, 6)), 0, 1).round(2)
    return y_true, y_score, [f"l{j}" for j in range(6)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_precision_profile_lowest_threshold_reaching_target(seed: int, target: float) -> None:
    y_true, y_score, labels = _profile_case(seed)
    result = target_precision_thresholds(y_true, y_score, labels, target=target)
    for j, name in enumerate(labels):
        t, s = y_true[:, j], y_score[:, j]
        reaching = [u for u in np.unique(s) if _rate(t, s >= u, "precision") >= target]
        if not reaching:
            assert result.fallbacks[name].startswith(f"precision {target} unreachable")
            assert result.values[j] == best_f1_threshold(t, s)[0]
            continue
        assert name not in result.fallbacks
        pred = s >= result.values[j]
        assert _rate(t, pred, "precision") >= target
        assert (pred == (s >= min(reaching))).all()  # the lowest such cut, not just any


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_recall_profile_highest_threshold_reaching_target(seed: int, target: float) -> None:
    y_true, y_score, labels = _profile_case(seed)
    result = target_recall_thresholds(y_true, y_score, labels, target=target)
    assert result.fallbacks == {}
    for j in range(len(labels)):
        t, s = y_true[:, j], y_score[:, j]
        highest = max(u for u in np.unique(s) if _rate(t, s >= u, "recall") >= target)
        pred = s >= result.values[j]
        assert _rate(t, pred, "recall") >= target
        assert (pred == (s >= highest)).all()


def test_unreachable_precision_falls_back_to_max_f1() -> None:
    # ranked - + - + - + - -: precision at the cuts 0, 1/2, 1/3, 2/4, 2/5, 3/6, ... never reaches 0.9;
    # F1 = 2TP / (TP + FP + 3) is best at the 0.4 cut (6/9), stored halfway to 0.3
    y_true = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    y_score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    result = target_precision_thresholds(y_true[:, None], y_score[:, None], ["a"], target=0.9)
    assert result.values[0] == pytest.approx(0.35) == best_f1_threshold(y_true, y_score)[0]
    assert result.fallbacks["a"] == "precision 0.9 unreachable (best 0.500): max-F1 0.3500"


def test_profiles_reject_bad_target() -> None:
    with pytest.raises(ValueError):
        target_recall_thresholds(np.ones((4, 1)), np.ones((4, 1)), ["a"], target=0.0)


def test_docstring_examples() -> None:
    import training.threshold_search

    assert doctest.testmod(training.threshold_search).failed == 0
