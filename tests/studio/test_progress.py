"""A job's progress from training's progress.jsonl: read generically, never going back."""

from __future__ import annotations

import json
from pathlib import Path

from service.studio.progress import Tail, Tracker

EXPECTED = {"startup": 10.0, "features": 10.0, "train": 60.0, "export": 10.0}


def test_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    tail = Tail(path)
    assert tail.read() == []
    path.write_text('{"stage": "features"}\n{"stage": "tr')
    assert tail.read() == [{"stage": "features"}]
    with path.open("a") as f:
        f.write('ain", "epoch": 1}\nnot json\n[1]\n')
    assert tail.read() == [{"stage": "train", "epoch": 1}]
    path.write_text('{"stage": "features"}\n')  # training started the file again
    assert tail.read() == [{"stage": "features"}]


def test_the_view_follows_the_stages_and_never_goes_back() -> None:
    t0 = 1000.0
    tracker = Tracker(EXPECTED, budget_s=60.0, to_featurise=40, started=t0)
    seen = [tracker.view(t0)]
    assert seen[0]["stage"] == "features" and seen[0]["to_featurise"] == 40 and seen[0]["eta_s"] == 90.0
    seen.append(tracker.view(t0 + 10))
    tracker.feed({"stage": "features", "time": t0 + 15, "computed": 30, "cached": 10, "seconds": 5.0})
    seen.append(tracker.view(t0 + 15))
    assert seen[-1]["featurised"] == 40
    tracker.feed({"stage": "estimate", "time": t0 + 16.5, "epochs": 20, "steps": 20})  # bookkeeping
    seen.append(tracker.view(t0 + 16.5))
    assert seen[-1]["stage"] == "features" and seen[-1]["progress"] < 0.3
    for epoch in range(1, 11):
        row = {"stage": "train", "time": t0 + 16 + epoch, "epoch": epoch, "best_epoch": epoch - epoch % 3}
        tracker.feed({**row, "train_loss": 1 / epoch, "val_loss": 2 / epoch})
        seen.append(tracker.view(t0 + 16 + epoch))
    assert seen[-1]["stage"] == "train" and seen[-1]["epoch"] == 10 and seen[-1]["best_epoch"] == 9
    assert seen[-1]["val_loss"] == 0.2 and 0 < seen[-1]["eta_s"] < 70
    assert 0.5 < seen[-1]["progress"] < 0.8, "10 of the 20 planned epochs"
    tracker.feed({"stage": "timing", "time": t0 + 39, "seconds": {"head": 9.0}})
    assert tracker.view(t0 + 39)["stage"] == "train"
    tracker.feed({"stage": "export", "time": t0 + 40, "files": ["best.onnx"]})  # stopped early
    seen.append(tracker.view(t0 + 40))
    tracker.feed({"stage": "calibrate", "time": t0 + 41, "done": 1, "total": 4})  # a stage unknown here
    seen.append(tracker.view(t0 + 42))
    assert seen[-1]["stage"] == "calibrate"
    progress = [v["progress"] for v in seen]
    assert progress == sorted(progress) and progress[-1] < 1.0 and progress[0] < 0.01
    measured = tracker.measured(t0 + 45)
    assert measured["feature_images"] == 30 and measured["feature_seconds"] == 5.0
    assert measured["epochs"] == 9 and measured["train_seconds"] == 9.0 and measured["export_s"] == 19.0
    json.dumps(measured)
