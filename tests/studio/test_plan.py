"""Job requests checked against a dataset before anything runs, and what they are estimated to cost."""

from __future__ import annotations

import pytest

from service.errors import RequestError
from service.studio.datasets import Image, Snapshot
from service.studio.plan import History, JobSpec, estimate, plan


def snapshot() -> Snapshot:
    rows = {
        "a.jpg": {"cat"},
        "b.jpg": {"cat", "dog"},
        "c.jpg": {"dog"},
        "d.jpg": set(),
        "e.jpg": {"cat"},
    }
    images = {n: Image(sha256=n * 8, labelled=True, labels=frozenset(x)) for n, x in rows.items()}
    images["u.jpg"] = Image(sha256="u" * 64, labelled=False, labels=frozenset())
    return Snapshot(id=1, name="pets", version=3, labels=["bird", "cat", "dog"], images=images)


def refused(body: dict, *, need_name: bool = True) -> RequestError:
    with pytest.raises(RequestError) as caught:
        plan(snapshot(), JobSpec.parse(body, need_name=need_name))
    return caught.value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": 1, "name": "m", "minutes": 0}, "minutes"),
        ({"dataset": 1, "name": "m", "minutes": -1}, "minutes"),
        ({"dataset": 1, "name": "m", "minutes": 1e9}, "minutes"),
        ({"dataset": 1, "name": "m", "minutes": "soon"}, "minutes"),
        ({"dataset": 1, "name": "Big Model"}, "name"),
        ({"dataset": 1, "name": "x" * 64}, "name"),
        ({"dataset": 1}, "name"),
        ({"dataset": 1, "name": "m", "val_size": 1.5}, "val_size"),
        ({"dataset": 1, "name": "m", "val_size": 0.2, "val_images": ["a.jpg"]}, "val_images"),
        ({"dataset": 1, "name": "m", "lr": 0}, "lr"),
        ({"dataset": 1, "name": "m", "epochs": 3}, "epochs"),
        ({"name": "m"}, "dataset"),
    ],
)
def test_bad_requests_name_their_field(body: dict, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        JobSpec.parse(body, need_name=True)
    assert caught.value.field == field and caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"include": ["fish"]}, "include", "unknown labels 'fish'"),
        ({"exclude": ["cat"]}, "exclude", "no image is labelled 'bird'"),  # bird has no positive image
        ({"include": ["bird", "cat"]}, "include", "no image is labelled 'bird'"),
        ({"exclude": ["bird", "cat", "dog"]}, "exclude", "no labels are left"),
        ({"exclude": ["bird"], "val_images": ["zzz.jpg"]}, "val_images", "no image named 'zzz.jpg'"),
        ({"exclude": ["bird"], "val_images": ["u.jpg"]}, "val_images", "have no labels"),
        (
            {"exclude": ["bird"], "val_images": ["c.jpg", "b.jpg"]},
            "val_images",
            "no training image is labelled 'dog'",
        ),
    ],
)
def test_what_training_would_refuse_is_refused_before_it_runs(body: dict, field: str, words: str) -> None:
    error = refused({"dataset": 1, "name": "m", **body})
    assert error.field == field and words in str(error), str(error)


def test_a_plan_keeps_the_labelled_images_and_the_kept_labels() -> None:
    p = plan(snapshot(), JobSpec.parse({"dataset": 1, "exclude": ["bird", "dog"]}, need_name=False))
    assert p.labels == {"cat": 3} and p.images == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert p.rows(["b.jpg", "c.jpg"]) == [("b.jpg", {"cat"}), ("c.jpg", frozenset())]
    v = plan(
        snapshot(),
        JobSpec.parse({"dataset": 1, "exclude": ["bird"], "val_images": ["c.jpg"]}, need_name=False),
    )
    assert v.validation == ["c.jpg"]


def test_estimates_use_defaults_until_jobs_have_measured_this_machine() -> None:
    spec = JobSpec.parse({"dataset": 1, "exclude": ["bird"], "minutes": 1}, need_name=False)
    p = plan(snapshot(), spec)
    fresh = estimate(p, spec, 5, History()).body
    assert fresh["to_featurise"] == 5 and fresh["feature_seconds"] == 0.2 and not fresh["measured"]
    assert fresh["labels"] == {"cat": 3, "dog": 2} and fresh["train_images"] + fresh["validation_images"] == 5
    assert fresh["epochs"] == 60 and fresh["steps"] == 60 and "defaults" in fresh["basis"]
    rows = [
        {
            "feature_images": 100,
            "feature_seconds": 4.0,
            "train_seconds": 30.0,
            "epoch_images": 3000,
            "batch_size": 2,
            "max_epochs": 50,
        }
    ]
    measured = estimate(p, spec, 5, History.pool(rows)).body
    assert measured["feature_rate"] == 25.0 and measured["feature_seconds"] == 0.2 and measured["measured"]
    assert measured["epochs"] == 50 and measured["steps"] == 50 * 2  # 4 training images, batches of 2


def test_the_defaults_are_training_s_own() -> None:
    from service.studio import plan as studio_plan
    from training.config import TrainConfig  # the studio may not import training; its tests may

    defaults = TrainConfig()
    assert defaults.batch_size == studio_plan.DEFAULT_BATCH_SIZE
    assert defaults.max_epochs == studio_plan.DEFAULT_MAX_EPOCHS
