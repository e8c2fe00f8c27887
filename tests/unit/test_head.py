"""training.head: folds, the stacked head's shapes, the training loop's stopping rules, out-of-fold scores."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.head import (
    StackedHead,
    bce_with_logits,
    estimate_steps,
    fold_assignment,
    oof_scores,
    sigmoid,
    train_heads,
)
from training.optim import AdamW, EarlyStop


def _separable(n: int = 200, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first three channels decide the three labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = (x[:, :3] > 0).astype(np.float32)
    return x, y


def _cfg(**overrides: object) -> TrainConfig:
    base = {"head": "linear", "lr": 1e-2, "batch_size": 64, "max_epochs": 30, "patience": 0, "seed": 0}
    return TrainConfig(**{**base, **overrides})


# --- fold_assignment -------------------------------------------------------------------------------


def test_fold_assignment_is_balanced() -> None:
    folds = fold_assignment(103, 5, seed=1)
    counts = np.bincount(folds, minlength=5)
    assert counts.sum() == 103
    assert counts.max() - counts.min() <= 1
    assert set(folds.tolist()) == set(range(5))


def test_fold_assignment_is_deterministic_per_seed() -> None:
    np.testing.assert_array_equal(fold_assignment(50, 5, seed=3), fold_assignment(50, 5, seed=3))
    assert not np.array_equal(fold_assignment(50, 5, seed=3), fold_assignment(50, 5, seed=4))


@pytest.mark.parametrize(("n", "k"), [(50, 1), (50, 0), (3, 5)])
def test_fold_assignment_is_all_minus_one_when_disabled(n: int, k: int) -> None:
    folds = fold_assignment(n, k, seed=0)
    assert folds.shape == (n,)
    assert np.all(folds == -1)


# --- StackedHead -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_stacked_head_output_is_heads_by_rows_by_labels(kind: str) -> None:
    head = StackedHead(4, 16, 3, kind=kind, hidden=8, dropout=0.0)
    assert head(np.zeros((7, 16), np.float32)).shape == (4, 7, 3)


def test_linear_head_weights_are_one_in_by_out_layer() -> None:
    head = StackedHead(2, 16, 3, kind="linear", hidden=8, dropout=0.0)
    [(w, b)] = head.weights(1)
    assert (w.shape, b.shape) == ((16, 3), (3,))
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_allclose(head(x)[1], x @ w + b, rtol=1e-5, atol=1e-5)


def test_mlp_head_weights_are_two_layers_whose_numpy_forward_matches() -> None:
    head = StackedHead(3, 16, 4, kind="mlp", hidden=8, dropout=0.5)  # dropout acts in training only
    layers = head.weights(2)
    assert [(w.shape, b.shape) for w, b in layers] == [((16, 8), (8,)), ((8, 4), (4,))]
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    (w1, b1), (w2, b2) = layers
    expected = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    got = head(x)[2]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_are_copies_not_views() -> None:
    head = StackedHead(2, 4, 2, kind="linear", hidden=8, dropout=0.0)
    [(w, _)] = head.weights(1)
    w[:] = 123.0
    assert not np.any(head.w1 == 123.0)
    assert w.flags.c_contiguous  # a column block of the stacked matrix, copied out whole


# --- train_heads -------------------------------------------------------------------------------------


def test_training_lowers_validation_loss_on_separable_features() -> None:
    x, y = _separable(260)
    cfg = _cfg(lr=0.1, max_epochs=40)
    res = train_heads(x[:200], y[:200], x[200:], y[200:], cfg, fold_assignment(200, 5, 0))
    first = res.history[0]["val_loss"]
    assert first < np.log(2) + 0.05  # roughly chance after one epoch
    assert res.best_val_loss < 0.4 * first
    assert res.best_val_loss <= res.last_val_loss
    assert 1 <= res.best_epoch <= res.last_epoch
    assert res.best_val_loss == min(row["val_loss"] for row in res.history)


def test_training_stops_at_max_epochs() -> None:
    x, y = _separable(260)
    res = train_heads(x[:200], y[:200], x[200:], y[200:], _cfg(max_epochs=7), fold_assignment(200, 0, 0))
    assert res.last_epoch == 7
    assert [row["epoch"] for row in res.history] == list(range(1, 8))
    assert "max_epochs=7" in res.stopped


def test_training_stops_after_patience_epochs_without_improvement() -> None:
    x, y = _separable(260)
    # lr=0 freezes the weights, so the validation loss after epoch 1 never gets strictly lower.
    cfg = _cfg(lr=0.0, max_epochs=50, patience=3)
    res = train_heads(x[:200], y[:200], x[200:], y[200:], cfg, fold_assignment(200, 5, 0))
    assert (res.best_epoch, res.last_epoch) == (1, 4)
    assert "3 epochs" in res.stopped


def test_a_deadline_in_the_past_stops_after_one_epoch() -> None:
    x, y = _separable(260)
    res = train_heads(
        x[:200], y[:200], x[200:], y[200:], _cfg(), fold_assignment(200, 5, 0), deadline=time.monotonic() - 1
    )
    assert res.last_epoch == 1
    assert len(res.history) == 1
    assert res.stopped == "time budget reached"


def test_on_epoch_is_called_once_per_epoch_with_the_history_row() -> None:
    x, y = _separable(260)
    rows: list[dict] = []
    res = train_heads(
        x[:200],
        y[:200],
        x[200:],
        y[200:],
        _cfg(max_epochs=4),
        fold_assignment(200, 5, 0),
        on_epoch=rows.append,
    )
    assert rows == res.history
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "best_epoch"}


def test_one_head_per_fold_plus_the_full_head() -> None:
    x, y = _separable(260)
    res = train_heads(x[:200], y[:200], x[200:], y[200:], _cfg(max_epochs=2), fold_assignment(200, 4, 0))
    assert res.best.n_heads == 5 and res.best(np.zeros((2, 16), np.float32)).shape == (5, 2, 3)
    no_folds = train_heads(x[:200], y[:200], x[200:], y[200:], _cfg(max_epochs=2), fold_assignment(200, 1, 0))
    assert no_folds.best.n_heads == 1


def test_fold_heads_learn_only_from_rows_outside_their_fold() -> None:
    # Features carry no information, so each head can only learn label rates from the rows it sees.
    # Label A is positive exactly on fold 0, label B exactly on fold 1: head 1 (without fold 0) sees A
    # always 0 and B always 1; head 2 (without fold 1) the reverse; head 0 sees each half the time.
    folds = np.arange(120) % 2
    y = np.stack([folds == 0, folds == 1], axis=1).astype(np.float32)
    x = np.zeros((120, 4))
    res = train_heads(x, y, x[:10], y[:10], _cfg(lr=0.1, max_epochs=60), folds)
    scores = sigmoid(res.last(np.zeros((1, 4), np.float32)))[:, 0]  # (H, L)
    assert scores[1, 0] < 0.1 and scores[1, 1] > 0.9
    assert scores[2, 0] > 0.9 and scores[2, 1] < 0.1
    np.testing.assert_allclose(scores[0], [0.5, 0.5], atol=0.05)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_fold_head_is_untouched_by_the_labels_of_its_own_fold(kind: str) -> None:
    """Out-of-fold stays out-of-fold: rewriting fold 0's labels changes head 0, never head 1."""
    x, y = _separable(200)
    folds = fold_assignment(200, 4, 0)
    flipped = y.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    cfg = _cfg(head=kind, hidden=8, dropout=0.3, lr=0.05, max_epochs=5)
    runs = [train_heads(x, labels, x[:20], y[:20], cfg, folds).last for labels in (y, flipped)]
    same = [runs[0].weights(1), runs[1].weights(1)]
    for (w, b), (w2, b2) in zip(*same, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(runs[0].weights(0)[0][0], runs[1].weights(0)[0][0])


# --- AdamW ---------------------------------------------------------------------------------------------


def test_adamw_takes_the_same_steps_as_torch_optim_adamw() -> None:
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    ours = [p.copy() for p in start]
    theirs = [torch.tensor(p, requires_grad=True) for p in start]
    opt = AdamW(ours, lr=0.05, weight_decay=0.01)
    ref = torch.optim.AdamW(theirs, lr=0.05, weight_decay=0.01)
    for step in range(6):
        grads = [rng.normal(size=p.shape).astype(np.float32) * (step + 1) for p in start]
        opt.step(grads)
        for t, g in zip(theirs, grads, strict=True):
            t.grad = torch.from_numpy(g)
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_backward_matches_finite_differences(kind: str) -> None:
    rng = np.random.default_rng(1)
    head = StackedHead(3, 5, 2, kind=kind, hidden=4, dropout=0.0, rng=rng)
    head.params[:] = [p.astype(np.float64) for p in head.params]  # exact arithmetic for the check
    head.w1, head.b1 = head.params[:2]
    if kind == "mlp":
        head.w2, head.b2 = head.params[2:]
    x = rng.normal(size=(6, 5))
    y = (rng.random((6, 2)) < 0.5).astype(np.float64)

    def loss() -> float:
        return float(bce_with_logits(head(x), y).sum())

    logits, cache = head.forward(x)
    grads = head.backward(cache, sigmoid(logits) - y)
    for p, g in zip(head.params, grads, strict=True):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            keep = p[i]
            p[i] = keep + 1e-6
            up = loss()
            p[i] = keep - 1e-6
            numeric[i] = (up - loss()) / 2e-6
            p[i] = keep
        np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-6)


# --- EarlyStop ------------------------------------------------------------------------------------------


def test_early_stop_counts_epochs_without_a_lower_smoothed_loss() -> None:
    stop = EarlyStop(patience=2, smoothing=0.5)
    assert [stop.update(v) for v in [1.0, 0.8, 0.9, 1.0]] == [False, False, False, True]


def test_one_lucky_epoch_does_not_end_training_while_the_trend_still_falls() -> None:
    # Raw losses: one lucky 0.7, then 0.8, 0.8, 0.75. Counting on raw losses would stop at epoch 5
    # (three epochs above 0.7); the moving average (1.0, 0.85, 0.825, 0.8125, 0.781) is still falling.
    stop = EarlyStop(patience=3, smoothing=0.5)
    assert not any(stop.update(v) for v in [1.0, 0.7, 0.8, 0.8, 0.75])
    assert [stop.update(v) for v in [0.9, 0.9, 0.9]] == [False, False, True]  # a real plateau ends it


def test_early_stop_with_patience_0_never_stops() -> None:
    stop = EarlyStop(patience=0)
    assert not any(stop.update(1.0) for _ in range(100))


# --- oof_scores ----------------------------------------------------------------------------------------


def test_oof_scores_take_each_row_from_the_head_that_left_its_fold_out() -> None:
    head = StackedHead(4, 2, 1, kind="linear", hidden=8, dropout=0.0)
    head.w1[:] = 0
    head.b1[:] = [0.0, 1.0, 2.0, 3.0]  # head h outputs the constant logit h
    folds = np.array([2, 0, 1, 1, 0, 2])
    x = np.random.default_rng(0).normal(size=(6, 2))
    got = oof_scores(head, x, folds, np.zeros(2), np.ones(2))
    assert got.shape == (6, 1)
    expected = 1 / (1 + np.exp(-(folds + 1.0)))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-6)


def test_oof_scores_are_none_without_folds() -> None:
    head = StackedHead(1, 2, 1, kind="linear", hidden=8, dropout=0.0)
    assert oof_scores(head, np.zeros((3, 2)), np.full(3, -1), np.zeros(2), np.ones(2)) is None


# --- estimate_steps ------------------------------------------------------------------------------------


def test_estimate_steps_fits_epochs_in_the_time_budget() -> None:
    cfg = TrainConfig(minutes=1.0, max_epochs=300, batch_size=64)
    assert estimate_steps(130, cfg, epoch_seconds=0.5) == (120, 360)  # 3 steps per epoch


def test_estimate_steps_is_capped_by_max_epochs_and_at_least_one_epoch() -> None:
    cfg = TrainConfig(minutes=1.0, max_epochs=300, batch_size=64)
    assert estimate_steps(64, cfg, epoch_seconds=0.001) == (300, 300)
    assert estimate_steps(64, cfg, epoch_seconds=0.0) == (300, 300)
    assert estimate_steps(10, cfg, epoch_seconds=1000.0) == (1, 1)
