"""The head's optimiser and stop rule: AdamW on numpy arrays, early stopping on a smoothed loss."""

from __future__ import annotations

import math

import numpy as np

SMOOTHING = 0.5  # weight of the previous value in the validation loss's moving average (stop rule only)


class AdamW:
    """torch.optim.AdamW's update (Loshchilov & Hutter) on numpy arrays, in place.

    The same arithmetic as `torch.optim.AdamW` with its defaults (tests/unit/test_head.py checks
    the two against each other step by step).
    """

    def __init__(
        self, params: list[np.ndarray], *, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8
    ) -> None:
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.steps = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.steps += 1
        b1, b2 = self.betas
        fix1, fix2 = 1 - b1**self.steps, 1 - b2**self.steps
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            p *= 1 - self.lr * self.weight_decay
            m += (1 - b1) * (g - m)
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr / fix1) * m / (np.sqrt(v) / math.sqrt(fix2) + self.eps)


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
