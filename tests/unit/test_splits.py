"""Stratified and user-defined train/validation splits."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from training.data.labels import LabelledSet, Sample
from training.data.sources import DataError, ImageFile
from training.data.splits import split_samples, user_split


def sample(name: str, *labels: str) -> Sample:
    return Sample(ImageFile(name, Path("/data") / name), frozenset(labels))


def random_set(n: int, seed: int = 1) -> tuple[list[Sample], list[str]]:
    """Common labels, rare labels (2-3 positives) and unlabelled images, mixed."""
    rng = random.Random(seed)
    common = ["cat", "dog", "car"]
    rare = {"owl": 2, "yak": 2, "emu": 3}
    samples = [
        sample(f"{i:04d}.jpg", *[x for x in common if rng.random() < 0.3]) for i in range(n)
    ]  # fmt: skip
    for label, count in rare.items():
        for i in rng.sample(range(n), count):
            samples[i] = sample(samples[i].image.relpath, *samples[i].labels, label)
    return samples, sorted([*common, *rare])


def names(samples: list[Sample]) -> list[str]:
    return [s.image.relpath for s in samples]


def counts(samples: list[Sample]) -> Counter[str]:
    return Counter(label for s in samples for label in s.labels)


def test_deterministic_per_seed_and_independent_of_input_order() -> None:
    samples, labels = random_set(200)
    train, val = split_samples(samples, labels, seed=3)
    again = split_samples(list(reversed(samples)), labels, seed=3)
    assert (names(train), names(val)) == (names(again[0]), names(again[1]))
    other = split_samples(samples, labels, seed=4)
    assert names(other[1]) != names(val)


@pytest.mark.parametrize("val_size", [0.1, 0.2, 0.5])
def test_sizes_and_every_label_on_both_sides(val_size: float) -> None:
    samples, labels = random_set(300)
    train, val = split_samples(samples, labels, val_size=val_size, seed=0)
    assert sorted(names(train) + names(val)) == sorted(names(samples))
    assert abs(len(val) - 300 * val_size) <= 4
    for label in labels:
        assert counts(train)[label] >= 1 and counts(val)[label] >= 1, label
    for label in ["cat", "dog", "car"]:  # common labels keep roughly the requested proportion
        share = counts(val)[label] / counts(samples)[label]
        assert abs(share - val_size) < 0.08, (label, share)


def test_label_hidden_behind_rarer_labels_is_still_split() -> None:
    # owl's two images are dealt out while distributing the rarer a and b; the repair pass splits them.
    samples = [sample("1.jpg", "a", "owl"), sample("2.jpg", "b", "owl")]
    samples += [sample(f"n{i}.jpg") for i in range(8)]
    for seed in range(5):
        train, val = split_samples(samples, ["a", "b", "owl"], seed=seed)
        assert counts(train)["owl"] == 1 and counts(val)["owl"] == 1


def test_both_sides_get_an_image_even_with_singleton_labels() -> None:
    samples = [sample(f"{i}.jpg", f"l{i}") for i in range(4)]
    train, val = split_samples(samples, [f"l{i}" for i in range(4)], val_size=0.2)
    assert len(train) >= 1 and len(val) >= 1


@pytest.mark.parametrize("val_size", [0.0, 1.0, -0.1, float("nan")])
def test_bad_val_size(val_size: float) -> None:
    with pytest.raises(DataError, match="val_size"):
        split_samples([sample("a.jpg"), sample("b.jpg")], [], val_size=val_size)


def test_too_few_samples() -> None:
    with pytest.raises(DataError, match="at least 2"):
        split_samples([sample("a.jpg", "cat")], ["cat"])


def test_user_split_takes_validation_images_and_their_labels() -> None:
    ls = LabelledSet(
        [sample("a.jpg", "cat"), sample("b.jpg", "cat", "dog"), sample("c.jpg", "dog"), sample("d.jpg")],
        ["cat", "dog"],
    )
    validation = LabelledSet([sample("c.jpg", "dog", "fox"), sample("e.jpg", "cat")], ["cat", "dog", "fox"])
    train, val = user_split(ls, validation)
    assert names(train) == ["a.jpg", "b.jpg", "d.jpg"]
    assert {s.image.relpath: set(s.labels) for s in val} == {"c.jpg": {"dog"}, "e.jpg": {"cat"}}


def test_user_split_leaving_a_label_without_training_images() -> None:
    ls = LabelledSet([sample("a.jpg", "cat"), sample("b.jpg", "dog")], ["cat", "dog"])
    with pytest.raises(DataError, match="no training image is labelled dog.*--exclude dog"):
        user_split(ls, LabelledSet([sample("b.jpg", "dog")], ["dog"]))
    with pytest.raises(DataError, match="nothing is left to train"):
        user_split(ls, LabelledSet(ls.samples, ls.labels))
