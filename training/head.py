"""The multi-label head and its training loop on cached features, in numpy.

One run trains 1 + k heads in lockstep as a single stacked model: head 0 on the whole train split
(the model users get) and head f+1 on the train split minus fold f (for out-of-fold scores). The
first layers of all heads are one (D, heads x width) matrix, so a step costs one large matrix
product rather than k + 1 small ones; the fold heads are snapshotted at head 0's best epoch, so the
out-of-fold scores of "best" come from the same recipe and the same epoch count.

Numpy, not torch: two layers need no autograd, numpy's BLAS is as fast here, and a retrain then
never imports torch (2 s of a 4-second retrain); torch stays for exporting the backbone, once.

The recipe (5-fold cross-validation, benchmarks/cv.py): AdamW at a learning rate high enough that
the best epoch comes within ~10 passes over the data, and an early stop once the smoothed
validation loss has not improved for `patience` epochs, so a warm retrain takes seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.config import TrainConfig
from training.optim import AdamW, EarlyStop


class StackedHead:
    """`n_heads` independent heads over the same standardised features: (N, D) -> (H, N, L) logits."""

    def __init__(
        self,
        n_heads: int,
        dim: int,
        n_labels: int,
        *,
        kind: str,
        hidden: int,
        dropout: float,
        rng: np.random.Generator | None = None,
    ):
        rng = rng or np.random.default_rng(0)
        self.kind, self.n_heads, self.n_labels = kind, n_heads, n_labels
        self.width = hidden if kind == "mlp" else n_labels
        self.dropout = dropout if kind == "mlp" else 0.0
        # nn.Linear's initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights, here zero biases.
        self.w1 = _uniform(rng, dim, (dim, n_heads * self.width))
        self.b1 = np.zeros(n_heads * self.width, np.float32)
        self.params = [self.w1, self.b1]
        if kind == "mlp":
            self.w2 = _uniform(rng, hidden, (n_heads, hidden, n_labels))
            self.b2 = np.zeros((n_heads, 1, n_labels), np.float32)
            self.params += [self.w2, self.b2]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Logits (H, N, L) and what `backward` needs."""
        z = x @ self.w1 + self.b1  # (N, H*W)
        if self.kind == "linear":
            return z.reshape(len(x), self.n_heads, self.width).transpose(1, 0, 2), (x, z)
        h = np.maximum(z, 0).reshape(len(x), self.n_heads, self.width).transpose(1, 0, 2)  # (H, N, K)
        return h @ self.w2 + self.b2, (x, z, h)

    def backward(self, cache: tuple, d_logits: np.ndarray) -> list[np.ndarray]:
        """Gradients of `params` given d loss / d logits (H, N, L)."""
        x = cache[0]
        n = len(x)
        if self.kind == "linear":
            dz = d_logits.transpose(1, 0, 2).reshape(n, -1)
            return [x.T @ dz, dz.sum(axis=0)]
        _, z, h = cache
        dw2 = h.transpose(0, 2, 1) @ d_logits  # (H, K, L)
        db2 = d_logits.sum(axis=1, keepdims=True)
        dh = (d_logits @ self.w2.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(n, -1)  # (N, H*K)
        dz = dh * (z > 0)
        return [x.T @ dz, dz.sum(axis=0), dw2, db2]

    def penalty(self) -> float:
        """Sum over heads of the squared weights (biases are not penalised)."""
        return float(sum((w.astype(np.float64) ** 2).sum() for w in self.params[::2]))

    def weights(self, head: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Layers of one head as (W (in, out), b (out,)) numpy pairs, for export."""
        cols = slice(head * self.width, (head + 1) * self.width)
        layers = [(self.w1[:, cols], self.b1[cols])]
        if self.kind == "mlp":
            layers.append((self.w2[head], self.b2[head, 0]))
        return [(np.array(w), np.array(b)) for w, b in layers]  # copies, contiguous

    def copy(self) -> StackedHead:
        clone = object.__new__(StackedHead)
        clone.__dict__.update(self.__dict__)
        clone.params = [p.copy() for p in self.params]
        clone.w1, clone.b1 = clone.params[:2]
        if self.kind == "mlp":
            clone.w2, clone.b2 = clone.params[2:]
        return clone


def _uniform(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
    bound = 1 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


@dataclass
class HeadResult:
    best: StackedHead  # snapshot at the lowest validation loss of head 0
    last: StackedHead
    best_epoch: int
    last_epoch: int
    best_val_loss: float
    last_val_loss: float
    mean: np.ndarray  # feature standardisation, folded into the first layer at export
    std: np.ndarray
    history: list[dict] = field(default_factory=list)
    stopped: str = ""


def fold_assignment(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index per train sample (balanced, shuffled); k < 2 disables out-of-fold heads."""
    if k < 2 or n < k:
        return np.full(n, -1)
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % k)


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # A channel that is (nearly) constant on a small train set would blow up on new images.
    return mean, np.maximum(std, 0.1 * float(np.median(std)) + 1e-6)


def train_heads(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    folds: np.ndarray,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> HeadResult:
    rng = np.random.default_rng(cfg.seed)
    mean, std = standardisation(x_train)
    xt = ((x_train - mean) / std).astype(np.float32)
    xv = ((x_val - mean) / std).astype(np.float32)
    yt, yv = y_train.astype(np.float32), y_val.astype(np.float32)
    n_folds = int(folds.max()) + 1
    member = _membership(folds, n_folds)  # (H, N): which train rows each head learns from
    model = StackedHead(
        1 + n_folds, xt.shape[1], yt.shape[1], kind=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout, rng=rng
    )
    opt = AdamW(model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    res = HeadResult(model.copy(), model, 0, 0, math.inf, math.inf, mean, std)
    stop = EarlyStop(cfg.patience)
    for epoch in range(1, cfg.max_epochs + 1):
        train_loss = _epoch(model, opt, xt, yt, member, cfg.batch_size, rng, cfg.l2)
        val_loss = evaluate_loss(model, xv, yv)
        res.last_epoch, res.last_val_loss = epoch, val_loss
        if val_loss < res.best_val_loss:
            res.best, res.best_epoch, res.best_val_loss = model.copy(), epoch, val_loss
        stalled = stop.update(val_loss)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "best_epoch": res.best_epoch}
        res.history.append(row)
        if on_epoch:
            on_epoch(row)
        if stalled:
            res.stopped = f"no lower smoothed validation loss in {cfg.patience} epochs"
            break
        if deadline is not None and time.monotonic() >= deadline:
            res.stopped = "time budget reached"
            break
    else:
        res.stopped = f"max_epochs={cfg.max_epochs} reached"
    return res


def _membership(folds: np.ndarray, n_folds: int) -> np.ndarray:
    rows = [np.ones(len(folds), dtype=bool)] + [folds != f for f in range(n_folds)]
    return np.stack(rows).astype(np.float32)


def bce_with_logits(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise binary cross-entropy of sigmoid(logits), computed without overflow."""
    return np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), with no overflow for large |z|


def _epoch(model: StackedHead, opt, xt, yt, member, batch_size: int, rng, l2: float) -> float:
    order = rng.permutation(len(xt))
    keep = 1.0 - model.dropout
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        xb, yb, mask = xt[idx], yt[idx], member[:, idx]
        if model.dropout:  # inverted dropout on the features, one mask shared by the heads
            xb = xb * ((rng.random(xb.shape, dtype=np.float32) < keep) / np.float32(keep))
        logits, cache = model.forward(xb)  # (H, B, L)
        per = bce_with_logits(logits, yb).mean(axis=2)  # (H, B)
        weight = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)  # each head: mean over its rows
        d_logits = (sigmoid(logits) - yb) * (weight[:, :, None] / yb.shape[1])
        grads = model.backward(cache, d_logits.astype(np.float32))
        if l2:  # d/dW of l2 * sum(W**2); params alternate weight, bias
            grads = [
                g + 2 * l2 * p if i % 2 == 0 else g
                for i, (g, p) in enumerate(zip(grads, model.params, strict=True))
            ]
        opt.step(grads)
        total += float(per[0].sum())
        seen += len(idx)
    return total / max(seen, 1)


def evaluate_loss(model: StackedHead, x: np.ndarray, y: np.ndarray, head: int = 0) -> float:
    return float(bce_with_logits(model(x)[head], y).mean())


def head_scores(model: StackedHead, x: np.ndarray, mean: np.ndarray, std: np.ndarray, head: int = 0):
    return sigmoid(model(((x - mean) / std).astype(np.float32))[head])


def oof_scores(model: StackedHead, x: np.ndarray, folds: np.ndarray, mean, std) -> np.ndarray | None:
    """Score each train row with the fold head that never saw it."""
    if folds.min() < 0:
        return None
    all_scores = sigmoid(model(((x - mean) / std).astype(np.float32)))  # (H, N, L)
    return all_scores[folds + 1, np.arange(len(x))]


def estimate_steps(n_train: int, cfg: TrainConfig, epoch_seconds: float) -> tuple[int, int]:
    """(epochs, optimiser steps) at most, given one timed epoch: max_epochs or the budget's limit.

    Early stopping usually ends sooner; this is the ceiling, not a forecast.
    """
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    epochs = cfg.max_epochs
    if epoch_seconds > 0:
        epochs = min(epochs, max(1, int(cfg.minutes * 60 / epoch_seconds)))
    return epochs, epochs * steps_per_epoch
