"""One tiny real model -> `manylabel stats | predictions | thresholds | report` through `training.cli.main`.

The generated images carry their labels as visible colours; two images lose their "red" label in the
CSV so the mislabel ranking has something true to find.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service import custom_thresholds
from service.cli import main
from service.inspect.inspector import Inspector
from service.metrics import image_correct
from service.store import load_model
from training.config import TrainConfig
from training.fit import fit

pytestmark = pytest.mark.slow
NAME = "inspect-colours"
LABELS = ("red", "blue", "green")
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
UNLABELLED_RED = ("img005.jpg", "img013.jpg")  # red is drawn, but not in the CSV


def make_dataset(root: Path, n: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """n images of grey noise with 0-3 coloured bars; the labels are the colours present."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rows = []
    for i in range(n):
        present = [lab for j, lab in enumerate(LABELS) if (i >> j) & 1 or rng.random() < 0.2]
        img = Image.fromarray(rng.integers(90, 160, (96, 96, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for k, lab in enumerate(present):
            x, y = 2 + 31 * k, int(rng.integers(2, 20))
            draw.rectangle([x, y, x + 29, y + 72], fill=COLOURS[lab])
        name = f"sub/img{i:03d}.png" if i % 7 == 0 else f"img{i:03d}.jpg"
        img.save(images / name)
        given = [lab for lab in present if not (lab == "red" and Path(name).name in UNLABELLED_RED)]
        rows.append([Path(name).name, *given])
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return images, labels


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    images, labels = make_dataset(root)
    cfg = TrainConfig(
        name=NAME,
        minutes=0.5,
        max_epochs=40,
        patience=0,
        folds=3,
        lr=1e-3,
        cache_dir=root / "cache",
        seed=1,
        int8="off",
    )
    return fit(images, labels, cfg, say=lambda _: None).stored


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_json_matches_training_time_statistics(stored, capsys):
    code, out, _ = run(capsys, "stats", stored.tag, "--json")
    assert code == 0
    answer = json.loads(out)
    assert (answer["model"], answer["which"], answer["profile"]) == (stored.tag, "best", "optimized")
    for split in ("train", "validation"):
        got = answer["splits"][split]
        confusion = got.pop("confusion")
        assert got == stored.manifest.models["best"].metrics[split].model_dump()
        assert {label: sum(c.values()) for label, c in confusion.items()} == dict.fromkeys(
            stored.manifest.labels, got["images"]
        )
    code, out, _ = run(capsys, "stats", NAME, "--which", "last", "--split", "validation")
    assert code == 0 and "last model, optimized thresholds" in out and "validation, per label:" in out


def test_predictions_filters_match_the_stored_records(stored, capsys):
    records = np.load(stored.path / "records.npz")
    val = records["split"] == "validation"
    y, s = records["y_true"][val], records["scores_best"][val]
    th = np.array(stored.manifest.models["best"].thresholds)
    tried = th.copy()
    tried[stored.manifest.labels.index("blue")] = 1e-6  # what-if: blue everywhere, so some images are wrong
    incorrect = int((~image_correct(y, s, tried)).sum())
    argv = ["predictions", NAME, "--split", "validation", "--filter", "incorrect", "--json"]
    code, out, _ = run(capsys, *argv, "--try", "blue=0.000001")
    answer = json.loads(out)
    assert code == 0 and answer["total"] == incorrect > 0 and answer["overridden"] == ["blue"]
    assert all(not item["correct"] for item in answer["items"])
    assert not (stored.path / custom_thresholds.CUSTOM_THRESHOLDS_FILE).exists()  # tried, not saved
    red = stored.manifest.labels.index("red")
    above_red = int((s[:, red] >= th[red]).sum())
    argv = ["predictions", NAME, "--split", "validation", "--filter", "above", "--label", "red", "--json"]
    code, out, _ = run(capsys, *argv, "--page-size", "2")
    answer = json.loads(out)
    assert (answer["total"], len(answer["items"])) == (above_red, min(2, above_red))
    assert all(item["labels"]["red"]["above"] for item in answer["items"])
    code, out, _ = run(capsys, "predictions", NAME, "--split", "train", "--sort", "wrong", "--advanced")
    assert code == 0 and re.search(r"train, filter all, sort wrong desc: \d+ images", out)


def test_thresholds_persist_and_drive_the_statistics(stored, capsys):
    code, out, _ = run(capsys, "thresholds", NAME, "--set", "red=0.99", "blue=0.01")
    assert code == 0 and "0.990*" in out
    assert (stored.path / custom_thresholds.CUSTOM_THRESHOLDS_FILE).is_file()
    load_model(NAME)  # the manifest's sha256 list still verifies: nothing it lists was touched
    answer = json.loads(run(capsys, "stats", NAME, "--json")[1])
    assert answer["profile"] == "custom"
    assert (answer["thresholds"]["red"], answer["thresholds"]["blue"]) == (0.99, 0.01)
    optimized = json.loads(run(capsys, "stats", NAME, "--json", "--profile", "optimized")[1])
    assert optimized["thresholds"] == stored.manifest.thresholds("best")
    code, out, _ = run(capsys, "thresholds", NAME, "--all", "0.5", "--json")
    state = json.loads(out)
    assert state["custom"]["best"] == dict.fromkeys(stored.manifest.labels, 0.5)
    assert state["thresholds"]["last"] == stored.manifest.thresholds("last")
    code, out, _ = run(capsys, "thresholds", NAME, "--reset")
    assert code == 0 and not (stored.path / custom_thresholds.CUSTOM_THRESHOLDS_FILE).exists()
    assert json.loads(run(capsys, "stats", NAME, "--json")[1])["profile"] == "optimized"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["thresholds", NAME, "--set", "horse=0.5"], "unknown label 'horse'"),
        (["thresholds", NAME, "--set", "red"], "LABEL=VALUE"),
        (["thresholds", NAME, "--all", "1.5"], "outside [0, 1]"),
        (["predictions", NAME, "--label", "horse"], "unknown label 'horse'"),
        (["stats", "no-such-model"], "not in the BentoML model store"),
    ],
)
def test_errors_are_a_message_and_exit_2(stored, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.startswith("manylabel: error: ") and message in err
    assert not (stored.path / custom_thresholds.CUSTOM_THRESHOLDS_FILE).exists()


def test_mislabelled_images_are_found(stored):
    found = Inspector.from_stored(stored).mislabelled("best", limit=10)["items"]
    hits = {(Path(c["name"]).name, c["label"], c["suggestion"]) for c in found}
    assert {(n, "red", "missing label?") for n in UNLABELLED_RED} & hits, found


def test_report_is_one_self_contained_html_file(stored, capsys, tmp_path):
    code, out, _ = run(capsys, "report", NAME, "--output", str(tmp_path / "out"))
    assert code == 0
    files = list((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [f"report-{stored.name}-{stored.version}.html"] and str(files[0]) in out
    text = files[0].read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert text.count("<svg") == len(LABELS) + 1  # PR curves: pooled, then one chart per label
    assert "data:image/jpeg;base64," in text  # mislabel candidates with their thumbnails
    assert not re.search(r"""(src|href)=["']?(https?:|//|/)""", text)  # nothing to fetch
    for section in ("Statistics", "Best vs last", "Label pairs", "Likely mislabelled images"):
        assert f"<h2>{section}</h2>" in text


def test_saved_thresholds_are_the_default_of_in_process_predict(stored, capsys, tmp_path):
    """`manylabel predict` uses custom_thresholds.json like the service; --threshold still wins."""
    image = tmp_path / "red.png"
    Image.fromarray(np.full((64, 64, 3), (220, 30, 30), np.uint8)).save(image)
    out_file = tmp_path / "p.json"
    predict = ["predict", "--model", NAME, "--images", str(image), "--format", "json"]
    predict += ["--output", str(out_file)]

    def used() -> dict[str, float]:
        return json.loads(out_file.read_text())["images"][0]["thresholds"]

    try:
        assert run(capsys, "thresholds", NAME, "--all", "0.97")[0] == 0
        code, _, err = run(capsys, *predict)
        assert code == 0, err
        assert used() == dict.fromkeys(stored.manifest.labels, 0.97)
        code, _, err = run(capsys, *predict, "--threshold", "0.2")
        assert code == 0, err
        assert used() == dict.fromkeys(stored.manifest.labels, 0.2)
    finally:
        assert run(capsys, "thresholds", NAME, "--reset")[0] == 0
