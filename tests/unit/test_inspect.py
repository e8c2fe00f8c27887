"""service.inspect on hand-made records: correctness semantics, filters, sorting, pagination, statistics
after a threshold change, best-vs-last diff, label pairs, mislabel candidates, thumbnails, custom thresholds.

The validation split (thresholds cat 0.5, dog 0.4, bird 0.6; ``>=`` is above):

    row name   truth       scores             cat  dog  bird   image
    4   e.jpg  cat         .9   .1   .2       TP   TN   TN     correct
    5   b.jpg  cat dog     .3   .8   .1       FN   TP   TN     incorrect
    6   f.jpg  -           .2   .3   .5       TN   TN   TN     correct (nothing above)
    7   a.jpg  dog         .6   .45  .7       FP   TP   FP     incorrect
    8   d.jpg  bird        .1   .2   .6       TN   TN   TP     correct (bird exactly at threshold)
    9   c.jpg  cat bird    .5   .41  .1       TP   FP   FN     incorrect
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from service import custom_thresholds
from service.errors import RequestError, ThresholdError
from service.inspect.inspector import Inspector
from service.inspect.records import MAX_PAGE_SIZE, ModelRecords
from service.inspect.review import diff, label_pairs, mislabel_candidates
from service.inspect.views import confusion, curves, predictions, select
from service.manifest import Backbone, Manifest, ModelEntry
from service.metrics import pr_curves, split_metrics
from service.thresholds import resolve as resolve_thresholds

LABELS = ["cat", "dog", "bird"]
TH = [0.5, 0.4, 0.6]
NAMES = ["t0.jpg", "t1.jpg", "sub/t2.png", "t3.jpg", "e.jpg", "b.jpg", "f.jpg", "a.jpg", "d.jpg", "c.jpg"]
SPLIT = ["train"] * 4 + ["validation"] * 6
Y = np.array(
    [
        [1, 0, 0],
        [0, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 0, 0],
        [1, 1, 0],
        [0, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 0, 1],
    ],
    dtype=bool,
)
BEST = np.array(
    [
        [0.95, 0.1, 0.1],
        [0.1, 0.2, 0.1],
        [0.2, 0.9, 0.3],
        [0.3, 0.2, 0.9],
        [0.9, 0.1, 0.2],
        [0.3, 0.8, 0.1],
        [0.2, 0.3, 0.5],
        [0.6, 0.45, 0.7],
        [0.1, 0.2, 0.6],
        [0.5, 0.41, 0.1],
    ]
)
LAST = BEST.copy()
LAST[4, 0], LAST[5, 0] = 0.4, 0.7  # e.jpg's cat becomes a miss, b.jpg's cat becomes a hit
OOF = np.full_like(BEST, np.nan)
OOF[:4] = [[0.05, 0.1, 0.1], [0.1, 0.97, 0.1], [0.2, 0.8, 0.3], [0.3, 0.2, 0.45]]
VAL = slice(4, 10)


def by_name(names: list[str]) -> list[int]:
    return [NAMES.index(n) for n in names]


def make_manifest(*, profiles: bool = True) -> Manifest:
    entry = {"epoch": 3, "val_loss": 0.2, "threshold_source": "oof", "thresholds": TH}
    prof = {"high_precision": [0.9, 0.8, 0.95], "high_recall": [0.1, 0.1, 0.2]} if profiles else {}
    return Manifest(
        name="pets",
        labels=LABELS,
        backbone=Backbone(id="efficientnet_lite0", package="x", feature_dim=8),
        models={
            "best": ModelEntry(file="best.onnx", profiles=prof, **entry),
            "last": ModelEntry(file="last.onnx", **entry),
        },
    )


def make_records(*, oof: bool = True, thumbnails: Path | None = None) -> ModelRecords:
    return ModelRecords(
        labels=LABELS,
        names=np.array(NAMES),
        split=np.array(SPLIT),
        y_true=Y.copy(),
        scores={"best": BEST.copy(), "last": LAST.copy()},
        oof={"best": OOF.copy(), "last": OOF.copy()} if oof else {},
        thumbnails=thumbnails,
    )


@pytest.fixture
def records() -> ModelRecords:
    return make_records()


def write_model(folder: Path, manifest: Manifest | None = None) -> Path:
    """A stored-model folder: manifest.json, records.npz and thumbnails.zip without t1.jpg's member."""
    (manifest or make_manifest()).write(folder)
    np.savez(
        folder / "records.npz",
        names=np.array(NAMES),
        split=np.array(SPLIT),
        y_true=Y.astype(np.uint8),
        scores_best=BEST,
        scores_last=LAST,
        oof_best=OOF,
        oof_last=OOF,
    )
    with zipfile.ZipFile(folder / "thumbnails.zip", "w") as zf:
        for row in range(len(NAMES)):
            if row != 1:
                zf.writestr(f"{row:06d}.jpg", f"jpeg {row}".encode())
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path)


@pytest.fixture
def inspector(model_dir: Path) -> Inspector:
    return Inspector(model_dir, Manifest.read(model_dir, verify=False), tag="pets:v1")


TH_ARR = np.array(TH)


# --- the four label cases and image-level correctness -------------------------------------------------


def test_four_label_cases_and_image_verdict(records):
    page = predictions(records, "best", "validation", TH_ARR, page_size=10)
    items = {item["name"]: item for item in page["items"]}
    c = items["c.jpg"]["labels"]  # TP, FP, FN in one image
    assert (c["cat"]["above"], c["cat"]["true"], c["cat"]["correct"]) == (True, True, True)  # TP
    assert (c["dog"]["above"], c["dog"]["true"], c["dog"]["correct"]) == (True, False, False)  # FP
    assert (c["bird"]["above"], c["bird"]["true"], c["bird"]["correct"]) == (False, True, False)  # FN
    e = items["e.jpg"]["labels"]["dog"]
    assert (e["above"], e["true"], e["correct"]) == (False, False, True)  # TN
    assert items["d.jpg"]["labels"]["bird"]["above"]  # score == threshold counts as above
    assert {n for n, i in items.items() if not i["correct"]} == {"b.jpg", "a.jpg", "c.jpg"}
    assert items["c.jpg"]["predicted"] == ["cat", "dog"] and items["c.jpg"]["true"] == ["cat", "bird"]
    assert items["c.jpg"]["scores"] == {"cat": 0.5, "dog": 0.41}


def test_confusion_counts(records):
    assert confusion(records, "best", "validation", TH_ARR) == {
        "cat": {"tp": 2, "fp": 1, "fn": 1, "tn": 2},
        "dog": {"tp": 2, "fp": 1, "fn": 0, "tn": 3},
        "bird": {"tp": 1, "fp": 1, "fn": 1, "tn": 3},
    }


# --- filters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_", "label", "expected"),
    [
        ("all", None, ["e.jpg", "b.jpg", "f.jpg", "a.jpg", "d.jpg", "c.jpg"]),
        ("correct", None, ["e.jpg", "f.jpg", "d.jpg"]),
        ("incorrect", None, ["b.jpg", "a.jpg", "c.jpg"]),
        ("above", None, ["e.jpg", "b.jpg", "a.jpg", "d.jpg", "c.jpg"]),
        ("below", None, ["f.jpg"]),
        ("all", "cat", ["e.jpg", "b.jpg", "f.jpg", "a.jpg", "d.jpg", "c.jpg"]),
        ("correct", "cat", ["e.jpg", "f.jpg", "d.jpg", "c.jpg"]),
        ("incorrect", "cat", ["b.jpg", "a.jpg"]),
        ("above", "cat", ["e.jpg", "a.jpg", "c.jpg"]),
        ("below", "cat", ["b.jpg", "f.jpg", "d.jpg"]),
        ("above", "bird", ["a.jpg", "d.jpg"]),
        ("below", "bird", ["e.jpg", "b.jpg", "f.jpg", "c.jpg"]),
        ("incorrect", "dog", ["c.jpg"]),
    ],
)
def test_filters_return_exactly_the_expected_images(records, filter_, label, expected):
    rows = select(records, "best", "validation", TH_ARR, filter=filter_, label=label)
    assert rows.tolist() == by_name(expected)


def test_filters_on_train_split_and_above_below_partition(records):
    assert select(records, "best", "train", TH_ARR, filter="incorrect").tolist() == []
    for label in (None, *LABELS):
        above = set(select(records, "best", "validation", TH_ARR, filter="above", label=label).tolist())
        below = set(select(records, "best", "validation", TH_ARR, filter="below", label=label).tolist())
        assert above.isdisjoint(below) and above | below == set(range(4, 10))


def test_filters_follow_the_thresholds(records):
    low = np.array([0.05, 0.05, 0.05])
    assert select(records, "best", "validation", low, filter="below").tolist() == []
    assert select(records, "best", "validation", low, filter="correct").tolist() == []


# --- sorting and pagination ---------------------------------------------------------------------------


def names_of(page: dict) -> list[str]:
    return [i["name"] for i in page["items"]]


@pytest.mark.parametrize(
    ("sort", "order", "label", "expected"),
    [
        ("row", None, None, ["e.jpg", "b.jpg", "f.jpg", "a.jpg", "d.jpg", "c.jpg"]),
        ("row", "desc", None, ["c.jpg", "d.jpg", "a.jpg", "f.jpg", "b.jpg", "e.jpg"]),
        ("name", None, None, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]),
        ("name", "desc", None, ["f.jpg", "e.jpg", "d.jpg", "c.jpg", "b.jpg", "a.jpg"]),
        # max score .9 .8 .7 .6, then f and c tie at .5 and keep row order
        ("score", None, None, ["e.jpg", "b.jpg", "a.jpg", "d.jpg", "f.jpg", "c.jpg"]),
        ("score", "asc", None, ["f.jpg", "c.jpg", "d.jpg", "a.jpg", "b.jpg", "e.jpg"]),
        ("score", None, "bird", ["a.jpg", "d.jpg", "f.jpg", "e.jpg", "b.jpg", "c.jpg"]),
        # incorrect first by their largest |truth - score| (c .9, b .7 = a .7), then correct ones
        ("wrong", None, None, ["c.jpg", "b.jpg", "a.jpg", "f.jpg", "d.jpg", "e.jpg"]),
    ],
)
def test_sorting(records, sort, order, label, expected):
    page = predictions(records, "best", "validation", TH_ARR, sort=sort, order=order, label=label)
    assert names_of(page) == expected


def test_pagination(records):
    kw = {"filter": "all", "sort": "name", "page_size": 4}
    one = predictions(records, "best", "validation", TH_ARR, page=1, **kw)
    two = predictions(records, "best", "validation", TH_ARR, page=2, **kw)
    three = predictions(records, "best", "validation", TH_ARR, page=3, **kw)
    assert (one["total"], one["pages"], one["page"]) == (6, 2, 1)
    assert names_of(one) + names_of(two) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    assert three["items"] == [] and three["total"] == 6
    filtered = predictions(records, "best", "validation", TH_ARR, filter="incorrect", page_size=2)
    assert (filtered["total"], filtered["pages"], len(filtered["items"])) == (3, 2, 2)


def test_basic_view_has_only_the_predicted_labels(records):
    item = predictions(records, "best", "validation", TH_ARR, view="basic")["items"][1]
    assert item["name"] == "b.jpg" and "labels" not in item
    assert item["predicted"] == ["dog"] and item["scores"] == {"dog": 0.8}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"filter": "wrong"}, "filter"),
        ({"sort": "size"}, "sort"),
        ({"order": "up"}, "order"),
        ({"view": "full"}, "view"),
        ({"page": 0}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 10_000}, "page_size"),
        ({"label": "horse"}, "label"),
    ],
)
def test_bad_prediction_arguments_name_the_field(records, kwargs, field):
    with pytest.raises(RequestError) as err:
        predictions(records, "best", "validation", TH_ARR, **kwargs)
    assert err.value.field == field and err.value.status == 400 and field in str(err.value)


def test_unknown_split_and_which(records):
    with pytest.raises(RequestError, match="split"):
        select(records, "best", "test", TH_ARR)
    with pytest.raises(RequestError, match="which"):
        select(records, "middle", "train", TH_ARR)


# --- thresholds: resolution and validation ------------------------------------------------------------


def test_resolve_thresholds_profiles_and_overrides():
    m = make_manifest()
    assert resolve_thresholds(m, "best").profile == "optimized"
    assert resolve_thresholds(m, "best").values.tolist() == TH
    assert resolve_thresholds(m, "best", profile="high_recall").values.tolist() == [0.1, 0.1, 0.2]
    custom = custom_thresholds.CustomThresholds(best={"dog": 0.7})
    t = resolve_thresholds(m, "best", custom=custom)
    assert (t.profile, t.values.tolist()) == ("custom", [0.5, 0.7, 0.6])
    assert resolve_thresholds(m, "last", custom=custom).profile == "optimized"  # custom is per model
    assert resolve_thresholds(m, "best", profile="optimized", custom=custom).values.tolist() == TH
    t = resolve_thresholds(m, "best", threshold=0.3, overrides={"bird": 0.9})
    assert t.values.tolist() == [0.3, 0.3, 0.9] and t.overridden == ("cat", "dog", "bird")
    with pytest.raises(RequestError, match="high_precision"):
        resolve_thresholds(m, "last", profile="high_precision")  # only best has profiles here
    with pytest.raises(RequestError, match="profile"):
        resolve_thresholds(m, "best", profile="strict")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overrides": {"horse": 0.5}}, "unknown label 'horse'"),
        ({"overrides": {"cat": 1.5}}, "outside"),
        ({"overrides": {"cat": -0.1}}, "outside"),
        ({"overrides": {"cat": float("nan")}}, "outside"),
        ({"overrides": {"cat": "0.5"}}, "not a number"),
        ({"threshold": float("inf")}, "outside"),
        ({"threshold": True}, "not a number"),
    ],
)
def test_threshold_validation_errors(kwargs, match):
    with pytest.raises(ThresholdError, match=match):
        resolve_thresholds(make_manifest(), "best", **kwargs)


# --- statistics and curves ----------------------------------------------------------------------------


def test_stats_after_a_threshold_change_equal_a_fresh_computation(inspector):
    before = inspector.stats("best")
    assert before["splits"]["validation"]["accuracy"] == 0.5 and before["profile"] == "optimized"
    inspector.update_thresholds({"set": {"cat": 0.25, "bird": 0.05}})
    after = inspector.stats("best")
    new = np.array([0.25, 0.4, 0.05])
    assert after["profile"] == "custom" and list(after["thresholds"].values()) == new.tolist()
    for split, rows in (("train", slice(0, 4)), ("validation", VAL)):
        fresh = split_metrics(Y[rows].astype(int), BEST[rows], new, LABELS).model_dump()
        got = dict(after["splits"][split])
        got.pop("confusion")
        assert got == fresh
    assert after["splits"]["validation"] != before["splits"]["validation"]
    optimized = inspector.stats("best", "validation", profile="optimized")
    assert optimized["splits"]["validation"] == before["splits"]["validation"]


def test_stats_keep_the_training_loss(model_dir):
    m = make_manifest()
    fresh = split_metrics(Y[VAL], BEST[VAL], TH_ARR, LABELS, loss=0.123)
    entry = m.models["best"].model_copy(update={"metrics": {"validation": fresh}})
    m.model_copy(update={"models": {**m.models, "best": entry}}).write(model_dir)
    got = Inspector(model_dir, Manifest.read(model_dir, verify=False)).statistics(
        "best", "validation", resolve_thresholds(m, "best")
    )
    assert got == fresh


def test_pr_curves_all_and_one_label(records):
    whole = curves(records, "best", "validation", TH_ARR)
    assert whole == pr_curves(Y[VAL], BEST[VAL], LABELS, TH_ARR)
    one = curves(records, "best", "validation", TH_ARR, label="dog")
    assert one["all"] is None and list(one["per_label"]) == ["dog"]
    assert one["per_label"]["dog"] == whole["per_label"]["dog"]
    assert one["per_label"]["dog"]["operating_point"]["threshold"] == 0.4


# --- best vs last, pairs, mislabelled -----------------------------------------------------------------


def test_best_vs_last_diff(records):
    d = diff(records, "validation", {"best": TH_ARR, "last": TH_ARR})
    cat = d["per_label"]["cat"]
    assert (cat["changed"], cat["fixed"], cat["broken"]) == (2, ["b.jpg"], ["e.jpg"])
    assert d["per_label"]["dog"]["changed"] == 0 and d["per_label"]["dog"]["delta_f1"] == 0
    assert d["images"] == {"fixed": 1, "broken": 1, "fixed_names": ["b.jpg"], "broken_names": ["e.jpg"]}
    ap = split_metrics(Y[VAL], LAST[VAL], TH_ARR, LABELS).per_label["cat"].ap
    assert cat["ap_last"] == ap and cat["delta_ap"] == pytest.approx(ap - cat["ap_best"])


def test_label_pairs(records):
    pairs = label_pairs(records, "best", "validation", TH_ARR)
    assert pairs["confused"] == [{"true": "bird", "predicted": "dog", "images": 1}]  # c.jpg
    assert pairs["co_occurring"] == [
        {"labels": ["cat", "dog"], "images": 1, "jaccard": 0.25},
        {"labels": ["cat", "bird"], "images": 1, "jaccard": 0.25},  # cat 3 images, bird 2,
    ]


def test_mislabel_candidates_use_out_of_fold_scores_for_train_rows(records):
    top = mislabel_candidates(records, "best", limit=3)
    assert [(c["name"], c["label"], c["suggestion"], c["source"]) for c in top] == [
        ("t1.jpg", "dog", "missing label?", "out-of-fold"),  # oof .97, model .2
        ("t0.jpg", "cat", "spurious label?", "out-of-fold"),  # oof .05, model .95
        ("c.jpg", "bird", "spurious label?", "validation"),
    ]
    assert top[0]["gap"] == pytest.approx(0.97) and top[0]["score"] == pytest.approx(0.97)
    val = mislabel_candidates(records, "best", split="validation", min_gap=0.65)
    assert [(c["name"], c["label"]) for c in val] == [("c.jpg", "bird"), ("b.jpg", "cat"), ("a.jpg", "bird")]


def test_mislabel_candidates_without_folds_flag_seen_scores():
    top = mislabel_candidates(make_records(oof=False), "best", split="train", min_gap=0.0, limit=2)
    assert [(c["name"], c["label"], c["source"]) for c in top] == [
        ("sub/t2.png", "bird", "train (seen)"),  # the model's own score .3 on an unlabelled label
        ("t3.jpg", "cat", "train (seen)"),
    ]


def test_listed_images_are_capped_like_a_gallery_page(records):
    """A request lists at most MAX_PAGE_SIZE images: diff's names and the mislabel candidates."""
    assert len(mislabel_candidates(records, "best", min_gap=0.0, limit=MAX_PAGE_SIZE)) == 30  # all of them
    for call in (
        lambda: mislabel_candidates(records, "best", limit=MAX_PAGE_SIZE + 1),
        lambda: diff(records, "validation", {"best": TH_ARR, "last": TH_ARR}, limit=MAX_PAGE_SIZE + 1),
    ):
        with pytest.raises(RequestError, match=r"limit: 501 must be an integer in \[0, 500\]") as err:
            call()
        assert err.value.field == "limit" and err.value.status == 400


# --- thumbnails and custom thresholds, as the service uses them ---------------------------------------


def test_thumbnails_by_name(inspector):
    assert inspector.image("train", "sub/t2.png") == b"jpeg 2"
    assert inspector.image("validation", "c.jpg") == b"jpeg 9"
    for split, name in [("validation", "t0.jpg"), ("train", "../../etc/passwd"), ("train", "t1.jpg")]:
        with pytest.raises(RequestError) as err:
            inspector.image(split, name)
        assert err.value.status == 404
    with pytest.raises(RequestError) as err:
        inspector.image("test", "c.jpg")
    assert err.value.status == 400


def test_update_thresholds_body(inspector, model_dir):
    state = inspector.update_thresholds({"which": "last", "all": 0.3})
    assert state["custom"] == {"best": {}, "last": {"cat": 0.3, "dog": 0.3, "bird": 0.3}}
    state = inspector.update_thresholds({"set": {"dog": 0.2}})
    assert state["thresholds"]["best"] == {"cat": 0.5, "dog": 0.2, "bird": 0.6}
    assert (model_dir / custom_thresholds.CUSTOM_THRESHOLDS_FILE).is_file()
    assert inspector.stats("last")["thresholds"]["cat"] == 0.3
    state = inspector.update_thresholds({"reset": ["dog"]})  # no which: both
    assert state["custom"] == {"best": {}, "last": {"cat": 0.3, "bird": 0.3}}
    assert inspector.update_thresholds({"reset": True})["custom"] == {"best": {}, "last": {}}
    for body, field in [
        ({"set": {"cat": 2}}, "set"),
        ({"set": {"horse": 0.5}}, "set"),
        ({"all": 0.5, "reset": True}, "body"),
        ({}, "body"),
        ({"which": "middle", "all": 0.5}, "which"),
        ({"model": "last", "all": 0.5}, "model"),  # best | last is `which`; `model` is a stored model
        ({"all": 0.5, "colour": 1}, "colour"),
        ({"reset": "yes"}, "reset"),
    ]:
        with pytest.raises(RequestError) as err:
            inspector.update_thresholds(body)
        assert err.value.field == field, body
