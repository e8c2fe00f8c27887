"""The multi-label head and its training loop on cached features.

One run trains 1 + k heads in lockstep as a single stacked module: head 0 on the whole train split
(the model users get) and head f+1 on the train split minus fold f (for out-of-fold scores). The
first layers of all heads are one (D, heads x width) matrix, so a step costs one large matrix
product rather than k + 1 small ones; the fold heads are snapshotted at head 0's best epoch, so the
out-of-fold scores of "best" come from the same recipe and the same epoch count.

The recipe (measured by 5-fold cross-validation, benchmarks/cv.py): AdamW at a learning rate high
enough that the best epoch comes within ~10 passes over the data, and an early stop once the
smoothed validation loss has not improved for `patience` epochs, so a warm retrain takes seconds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig

SMOOTHING = 0.5  # weight of the previous value in the validation loss's moving average (stop rule only)


class StackedHead(nn.Module):
    """`n_heads` independent heads over the same standardised features: (N, D) -> (H, N, L)."""

    def __init__(self, n_heads: int, dim: int, n_labels: int, *, kind: str, hidden: int, dropout: float):
        super().__init__()
        self.kind, self.n_heads, self.n_labels = kind, n_heads, n_labels
        self.width = hidden if kind == "mlp" else n_labels
        # Column block h of w1 is head h's first layer, initialised as nn.Linear would.
        self.w1 = nn.Parameter(torch.empty(dim, n_heads * self.width))
        self.b1 = nn.Parameter(torch.zeros(n_heads * self.width))
        for h in range(n_heads):
            nn.init.kaiming_uniform_(self._block(h).T, a=math.sqrt(5))
        if kind == "mlp":
            self.w2 = nn.Parameter(torch.empty(n_heads, hidden, n_labels))
            self.b2 = nn.Parameter(torch.zeros(n_heads, 1, n_labels))
            for h in range(n_heads):
                nn.init.kaiming_uniform_(self.w2.data[h].T, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout if kind == "mlp" else 0.0)

    def _block(self, head: int) -> torch.Tensor:
        return self.w1.data[:, head * self.width : (head + 1) * self.width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.addmm(self.b1, self.drop(x), self.w1).view(len(x), self.n_heads, self.width)
        if self.kind == "linear":
            return z.transpose(0, 1)
        return torch.bmm(torch.relu(z).transpose(0, 1), self.w2) + self.b2

    def penalty(self) -> torch.Tensor:
        """Sum over heads of the squared weights (biases are not penalised)."""
        total = self.w1.pow(2).sum()
        if self.kind == "mlp":
            total = total + self.w2.pow(2).sum()
        return total

    def weights(self, head: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Layers of one head as (W (in, out), b (out,)) numpy pairs, for export."""
        cols = slice(head * self.width, (head + 1) * self.width)
        layers = [(self.w1[:, cols], self.b1[cols])]
        if self.kind == "mlp":
            layers.append((self.w2[head], self.b2[head, 0]))
        return [(w.detach().numpy().copy(), b.detach().numpy().copy()) for w, b in layers]


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
    torch.manual_seed(cfg.seed)
    mean, std = standardisation(x_train)
    xt = torch.from_numpy((x_train - mean) / std).float()
    yt = torch.from_numpy(y_train.astype(np.float32))
    xv = torch.from_numpy((x_val - mean) / std).float()
    yv = torch.from_numpy(y_val.astype(np.float32))
    n_folds = int(folds.max()) + 1
    member = _membership(folds, n_folds)  # (H, N): which train rows each head learns from
    model = StackedHead(
        1 + n_folds, xt.shape[1], yt.shape[1], kind=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout
    )
    opt = AdamW(list(model.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = HeadResult(
        best=copy.deepcopy(model),
        last=model,
        best_epoch=0,
        last_epoch=0,
        best_val_loss=math.inf,
        last_val_loss=math.inf,
        mean=mean,
        std=std,
    )
    stop = EarlyStop(cfg.patience)
    for epoch in range(1, cfg.max_epochs + 1):
        train_loss = _epoch(model, opt, xt, yt, member, cfg.batch_size, gen, cfg.l2)
        val_loss = evaluate_loss(model, xv, yv)
        res.last_epoch, res.last_val_loss = epoch, val_loss
        if val_loss < res.best_val_loss:
            res.best, res.best_epoch, res.best_val_loss = copy.deepcopy(model), epoch, val_loss
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
    res.best.eval()
    model.eval()
    return res


class AdamW:
    """torch.optim.AdamW's update (Loshchilov & Hutter), written out for our few parameters.

    Creating any `torch.optim` optimiser imports torch._dynamo (sympy, triton, ...): 2-8 s of a
    warm retrain here, more than the head's training itself. These lines do the same arithmetic as
    `torch.optim.AdamW` with its defaults (tests/unit/test_head.py checks them against it).
    """

    def __init__(
        self, params: list[nn.Parameter], *, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8
    ) -> None:
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        fix1, fix2 = 1 - b1**self.steps, 1 - b2**self.steps
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.weight_decay)
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(fix2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / fix1)


class EarlyStop:
    """Stop once the smoothed validation loss has not improved for `patience` epochs (0: never).

    The rule follows an exponential moving average, so one lucky (or unlucky) epoch on a small
    validation split neither ends training nor keeps it going; `best` is still the lowest raw loss.
    """

    def __init__(self, patience: int, smoothing: float = SMOOTHING) -> None:
        self.patience, self.smoothing = patience, smoothing
        self.smooth = self.lowest = math.inf
        self.since = 0

    def update(self, val_loss: float) -> bool:
        """Record one epoch's loss; True when training should stop now."""
        first = self.smooth == math.inf
        self.smooth = val_loss if first else self.smoothing * self.smooth + (1 - self.smoothing) * val_loss
        if self.smooth < self.lowest:
            self.lowest, self.since = self.smooth, 0
        else:
            self.since += 1
        return bool(self.patience) and self.since >= self.patience


def _membership(folds: np.ndarray, n_folds: int) -> torch.Tensor:
    rows = [np.ones(len(folds), dtype=bool)] + [folds != f for f in range(n_folds)]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def _epoch(model, opt, xt, yt, member, batch_size, gen, l2: float) -> float:
    model.train()
    order = torch.randperm(len(xt), generator=gen)
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = model(xt[idx])  # (H, B, L)
        per = nn.functional.binary_cross_entropy_with_logits(
            logits, yt[idx].expand_as(logits), reduction="none"
        ).mean(dim=2)  # (H, B)
        mask = member[:, idx]
        loss = ((per * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
        if l2:
            loss = loss + l2 * model.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(per[0].detach().sum())
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate_loss(model: StackedHead, x: torch.Tensor, y: torch.Tensor, head: int = 0) -> float:
    model.eval()
    logits = model(x)[head]
    return float(nn.functional.binary_cross_entropy_with_logits(logits, y))


@torch.no_grad()
def head_scores(model: StackedHead, x: np.ndarray, mean: np.ndarray, std: np.ndarray, head: int = 0):
    model.eval()
    xs = torch.from_numpy((x - mean) / std).float()
    return torch.sigmoid(model(xs)[head]).numpy()


@torch.no_grad()
def oof_scores(model: StackedHead, x: np.ndarray, folds: np.ndarray, mean, std) -> np.ndarray | None:
    """Score each train row with the fold head that never saw it."""
    if folds.min() < 0:
        return None
    model.eval()
    all_scores = torch.sigmoid(model(torch.from_numpy((x - mean) / std).float())).numpy()  # (H, N, L)
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
