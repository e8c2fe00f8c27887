"""A running job's progress, from training's `progress.jsonl`, read generically.

Training appends one JSON object per line to `<workdir>/progress.jsonl`: each has a `stage`
(`features`, `train`, `export`, ...) and the fields of that moment (`computed`/`cached`/`seconds` of
the feature pass; `epoch`, `train_loss`, `val_loss`, `best_epoch` of each epoch; `time`). `Tail`
reads the lines added since the last look; `Tracker` keeps the newest value of every field it knows
and turns them into what the page shows: the stage, a progress in [0, 1] that never goes back, and
an ETA. Rows of stages it does not know add their fields without moving the bar; a stage that
reports `done` and `total` is shown and moves its phase's share of the bar by them.

Until its first line (written when the feature pass ends) the job is in `features`: loading the
backbone and featurising. Each phase's share of the bar is its expected duration (`plan.estimate`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STAGES = ("features", "train", "export")  # the phases of the bar, in order
SHOWN = ("epoch", "best_epoch", "train_loss", "val_loss")


class Tail:
    """The complete lines appended to a file since the last `read()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                if handle.seek(0, 2) < self.offset:  # truncated: training restarted the log
                    self.offset, self.partial = 0, b""
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


class Tracker:
    """The view of one running job, fed with progress rows.

    The bar moves through `STAGES` (the phase); a row of another stage (training's `estimate`,
    `timing`) only contributes its fields, unless it reports `done` / `total`, which makes it the
    stage shown. A row's `epochs` is the number of epochs training plans (its `estimate` row).
    """

    def __init__(
        self, expected: dict[str, float], budget_s: float, to_featurise: int, started: float
    ) -> None:
        self.expected = {**expected, "features": expected["startup"] + expected["features"]}
        self.budget_s = budget_s
        self.started = started
        self.stage = self.phase = "features"
        self.fields: dict[str, Any] = {"to_featurise": to_featurise}
        self.phase_started = {"features": started}
        self.done_total: tuple[float, float] | None = None
        self.planned_epochs: int | None = None
        self.first_epoch: tuple[int, float] | None = None
        self.last_epoch: tuple[int, float] | None = None
        self.progress = 0.0
        self.feature_pass: tuple[int, float] | None = None  # (images computed, seconds)

    def feed(self, row: dict[str, Any]) -> None:
        stage = str(row.get("stage") or self.stage)
        at = float(row.get("time") or time.time())
        done, total = row.get("done"), row.get("total")
        counted = isinstance(done, int | float) and isinstance(total, int | float) and total > 0
        if stage in STAGES or counted:
            if stage != self.stage:
                self.stage, self.done_total = stage, None
            if stage in STAGES and stage != self.phase:
                self.phase = stage
                self.phase_started.setdefault(stage, at)
        if counted:
            self.done_total = (float(done), float(total))
        if stage == "features" and "computed" in row:
            self.fields["featurised"] = int(row.get("computed") or 0) + int(row.get("cached") or 0)
            self.feature_pass = (int(row.get("computed") or 0), float(row.get("seconds") or 0.0))
        if isinstance(row.get("epochs"), int) and row["epochs"] > 0:
            self.planned_epochs = row["epochs"]
        if isinstance(row.get("epoch"), int):
            self.last_epoch = (row["epoch"], at)
            self.first_epoch = self.first_epoch or (row["epoch"], at)
        for key in SHOWN:
            if key in row:
                self.fields[key] = row[key]

    def _fraction(self, phase: str, now: float) -> float:
        """How far `phase` is, in [0, 1]."""
        here = STAGES.index(self.phase)
        if STAGES.index(phase) != here:
            return 1.0 if STAGES.index(phase) < here else 0.0
        if self.done_total is not None and self.stage == phase:
            return min(1.0, self.done_total[0] / self.done_total[1])
        elapsed = now - self.phase_started.get(phase, now)
        if phase == "train":
            by_epochs = (
                self.last_epoch[0] / self.planned_epochs if self.planned_epochs and self.last_epoch else 0
            )
            return min(0.99, max(by_epochs, elapsed / max(self.budget_s, 1e-9)))
        return min(0.95, elapsed / max(self.expected[phase], 1.0))

    def _train_left(self, now: float) -> float:
        """Training's rest: its budget's, or fewer when the planned epochs end sooner at their pace."""
        left = max(0.0, self.budget_s - (now - self.phase_started["train"]))
        if (
            self.planned_epochs
            and self.first_epoch
            and self.last_epoch
            and self.last_epoch[0] > self.first_epoch[0]
        ):
            pace = (self.last_epoch[1] - self.first_epoch[1]) / (self.last_epoch[0] - self.first_epoch[0])
            left = min(left, max(0.0, self.planned_epochs - self.last_epoch[0]) * pace)
        return left

    def _remaining(self, now: float) -> float:
        """Seconds left: each phase's expected time not yet spent."""
        left = 0.0
        for phase in STAGES:
            fraction = self._fraction(phase, now)
            if fraction >= 1:
                continue
            if phase == "train" and self.phase == "train":
                left += self._train_left(now)
            else:
                left += self.expected[phase] * (1 - fraction)
        return left

    def view(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        total = sum(self.expected[s] for s in STAGES) or 1.0
        done = sum(self.expected[s] * self._fraction(s, now) for s in STAGES) / total
        self.progress = max(self.progress, min(0.99, done))
        return {
            "stage": self.stage,
            "progress": round(self.progress, 4),
            "eta_s": round(self._remaining(now), 1),
            **self.fields,
        }

    def measured(self, finished: float) -> dict[str, Any]:
        """What this job teaches the next estimates (stored with the job once it is done)."""
        out: dict[str, Any] = {}
        computed, seconds = self.feature_pass or (0, 0.0)
        if computed and seconds:
            out.update(feature_images=computed, feature_seconds=seconds)
        train_at = self.phase_started.get("train")
        if train_at is not None and self.feature_pass is not None:
            out["startup_s"] = max(0.0, train_at - self.started - seconds)
        if self.first_epoch and self.last_epoch and self.last_epoch[0] > self.first_epoch[0]:
            epochs = self.last_epoch[0] - self.first_epoch[0]
            out.update(train_seconds=self.last_epoch[1] - self.first_epoch[1], epochs=epochs)
        if self.last_epoch is not None:
            out["export_s"] = max(0.0, finished - self.last_epoch[1])
        return out
