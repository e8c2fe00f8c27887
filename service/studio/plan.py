"""A job request checked against its dataset, and what it will cost: POST /jobs/estimate and POST /jobs.

`JobSpec` is the JSON body; `plan()` checks it against a dataset snapshot (the refusals training would
make, made before anything runs: unknown labels, a label left with no positive image, unknown or
unlabelled validation images) and says what the job trains on; `estimate()` prices it from what
earlier jobs measured on this machine (`History`), or from stated defaults before the first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import RequestError, first_error
from service.studio.datasets import Snapshot

# BentoML's rule for a tag's name (bentoml/_internal/tag.py), without its silent lower-casing.
MODEL_NAME = re.compile(r"[a-z0-9]([-._a-z0-9]*[a-z0-9])?")
MAX_MODEL_NAME = 63
MAX_MINUTES = 24 * 60  # a budget over a day is a typo, not a plan
MAX_LIST = 10_000  # labels or validation images named in one request

# Before a job has measured them here: EfficientNet-Lite0 features at 224 px ran at 18-22 images/s on
# the 2-core test machine; start-up (backbone load/export) ~10 s, export + save ~10 s. The batch and
# the epoch cap are `manylabel train`'s defaults (training/config.py; tests/studio checks they agree),
# until a finished job's manifest says what it used.
DEFAULT_FEATURE_RATE = 20.0
DEFAULT_STARTUP_S = 10.0
DEFAULT_EXPORT_S = 10.0
DEFAULT_BATCH_SIZE = 128
DEFAULT_MAX_EPOCHS = 60


class JobSpec(BaseModel):
    """POST /jobs and /jobs/estimate: what to train. `name` is required to start a job."""

    model_config = ConfigDict(extra="forbid")

    dataset: int | str = Field(description="dataset id (or name)")
    name: str | None = Field(None, description="model name in the store (lowercase, digits, - _ .)")
    minutes: float = Field(5.0, gt=0, le=MAX_MINUTES, description="head training budget, minutes")
    include: list[str] = Field(default_factory=list, max_length=MAX_LIST, description="train only these")
    exclude: list[str] = Field(default_factory=list, max_length=MAX_LIST, description="leave these out")
    val_size: float | None = Field(None, gt=0, lt=1, description="fraction held out (default 0.2)")
    val_images: list[str] | None = Field(None, max_length=MAX_LIST, description="validation image names")
    lr: float | None = Field(None, gt=0, le=1, description="learning rate (default: training's)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="split and initialisation seed")

    @classmethod
    def parse(cls, body: Any, *, need_name: bool) -> JobSpec:
        if not isinstance(body, dict):
            raise RequestError("body: send a JSON object", field="body")
        try:
            spec = cls.model_validate(body)
        except ValidationError as exc:
            where, message = first_error(exc)
            raise RequestError(f"{where}: {message}", field=where.split(".")[0]) from None
        if spec.val_size is not None and spec.val_images is not None:
            raise RequestError("val_images: give val_size or val_images, not both", field="val_images")
        if need_name or spec.name is not None:
            _check_name(spec.name)
        return spec


def _check_name(name: str | None) -> None:
    if not name:
        raise RequestError('name: give the model a name, e.g. "shoes-v2"', field="name")
    if len(name) > MAX_MODEL_NAME or not MODEL_NAME.fullmatch(name):
        raise RequestError(
            f"name: {name[:100]!r} is not a model name: at most {MAX_MODEL_NAME} lowercase letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit",
            field="name",
        )


@dataclass(frozen=True)
class Plan:
    """What a job trains on: the labelled images, the labels kept, the validation choice."""

    snapshot: Snapshot
    labels: dict[str, int]  # kept label -> positive images
    images: list[str]  # labelled images, sorted
    validation: list[str] | None  # the images named by val_images; None: training splits by val_size

    @property
    def shas(self) -> set[str]:
        return {self.snapshot.images[name].sha256 for name in self.images}

    def rows(self, names: list[str]) -> list[tuple[str, frozenset[str]]]:
        """CSV rows of `names`, with only the kept labels (a dropped label leaves every image)."""
        keep = set(self.labels)
        return [(name, self.snapshot.images[name].labels & keep) for name in names]


def plan(snapshot: Snapshot, spec: JobSpec) -> Plan:
    """Check `spec` against the dataset; RequestError naming the field otherwise."""
    labelled = snapshot.labelled()
    if not labelled:
        raise RequestError(
            f"dataset: {snapshot.name!r} has no labelled images; upload a labels CSV first", field="dataset"
        )
    known = set(snapshot.labels)
    for name in ("include", "exclude"):
        unknown = sorted(set(getattr(spec, name)) - known)
        if unknown:
            raise RequestError(
                f"{name}: unknown labels {_first(unknown)}; the labels are {_first(sorted(known))}",
                field=name,
            )
    keep = (set(spec.include) if spec.include else known) - set(spec.exclude)
    if not keep:
        raise RequestError("exclude: no labels are left to train", field="exclude")
    counts = Counter(x for im in labelled.values() for x in im.labels & keep)
    empty = sorted(keep - counts.keys())
    if empty:
        field_ = "include" if spec.include else "exclude"
        raise RequestError(
            f"{field_}: no image is labelled {_first(empty)}; label some images with it or add it to exclude",
            field=field_,
        )
    validation = _validation(snapshot, spec, keep, labelled) if spec.val_images is not None else None
    if validation is None and len(labelled) < 2:
        raise RequestError(
            "dataset: 1 labelled image; at least 2 are needed to hold some out", field="dataset"
        )
    return Plan(snapshot, {x: counts[x] for x in sorted(keep)}, sorted(labelled), validation)


def _validation(snapshot: Snapshot, spec: JobSpec, keep: set[str], labelled: dict) -> list[str]:
    names = sorted(set(spec.val_images or ()))
    if not names:
        raise RequestError(
            "val_images: name at least one image, or give val_size instead", field="val_images"
        )
    unknown = [n for n in names if n not in snapshot.images]
    if unknown:
        raise RequestError(f"val_images: no image named {_first(unknown)} in the dataset", field="val_images")
    unlabelled = [n for n in names if n not in labelled]
    if unlabelled:
        raise RequestError(
            f"val_images: {_first(unlabelled)} have no labels; label them or leave them out",
            field="val_images",
        )
    train = Counter(x for name, im in labelled.items() if name not in set(names) for x in im.labels & keep)
    if not set(names) < set(labelled):
        raise RequestError(
            "val_images: every labelled image is named; leave some to train on", field="val_images"
        )
    missing = sorted(keep - train.keys())
    if missing:
        raise RequestError(
            f"val_images: no training image is labelled {_first(missing)} once these are held out; "
            "move some to training, or exclude those labels",
            field="val_images",
        )
    return names


@dataclass(frozen=True)
class History:
    """What finished jobs measured here (`jobs.measured`), pooled; None where nothing is known yet."""

    feature_rate: float | None = None  # images/s of the feature pass
    epoch_seconds_per_image: float | None = None  # one epoch's seconds / training images
    startup_s: float | None = None
    export_s: float | None = None
    batch_size: int | None = None  # from the newest model's manifest
    max_epochs: int | None = None
    jobs: int = 0

    @classmethod
    def pool(cls, rows: list[dict]) -> History:
        def ratio(num: str, den: str) -> float | None:
            pairs = [(r[num], r[den]) for r in rows if r.get(num) and r.get(den)]
            return sum(a for a, _ in pairs) / sum(b for _, b in pairs) if pairs else None

        def mean(key: str) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        newest = next((r for r in rows if r.get("batch_size")), {})
        return cls(
            feature_rate=ratio("feature_images", "feature_seconds"),
            epoch_seconds_per_image=ratio("train_seconds", "epoch_images"),
            startup_s=mean("startup_s"),
            export_s=mean("export_s"),
            batch_size=newest.get("batch_size"),
            max_epochs=newest.get("max_epochs"),
            jobs=len(rows),
        )


@dataclass(frozen=True)
class Estimate:
    body: dict[str, Any]
    expected: dict[str, float] = field(default_factory=dict)  # seconds per phase, for progress and ETA


def estimate(p: Plan, spec: JobSpec, to_featurise: int, history: History) -> Estimate:
    """Label counts, images still to featurise, feature seconds and optimiser steps of this job."""
    n = len(p.images)
    n_val = len(p.validation) if p.validation is not None else max(1, round(n * (spec.val_size or 0.2)))
    n_train = n - n_val
    rate = history.feature_rate or DEFAULT_FEATURE_RATE
    batch = history.batch_size or DEFAULT_BATCH_SIZE
    max_epochs = history.max_epochs or DEFAULT_MAX_EPOCHS
    budget_s = spec.minutes * 60
    epochs = max_epochs
    if history.epoch_seconds_per_image:
        epochs = min(max_epochs, max(1, int(budget_s / (history.epoch_seconds_per_image * n_train))))
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    feature_s = to_featurise / rate
    train_s = (
        min(budget_s, epochs * history.epoch_seconds_per_image * n_train)
        if history.epoch_seconds_per_image
        else budget_s
    )
    expected = {
        "startup": history.startup_s or DEFAULT_STARTUP_S,
        "features": feature_s,
        "train": train_s,
        "export": history.export_s or DEFAULT_EXPORT_S,
    }
    body = {
        "dataset": p.snapshot.id,
        "version": p.snapshot.version,
        "labels": p.labels,
        "images": n,
        "train_images": n_train,
        "validation_images": n_val,
        "to_featurise": to_featurise,
        "feature_rate": round(rate, 2),
        "feature_seconds": round(feature_s, 1),
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "seconds": round(sum(expected.values()), 1),
        "measured": history.jobs > 0,
        "basis": (
            f"measured by {history.jobs} finished job(s) on this machine"
            if history.jobs
            else f"defaults: {DEFAULT_FEATURE_RATE:g} images/s, up to {DEFAULT_MAX_EPOCHS} epochs of "
            f"{DEFAULT_BATCH_SIZE}; no job has finished here yet"
        ),
    }
    return Estimate(body, expected)


def _first(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n[:100]) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
