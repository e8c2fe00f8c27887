"""Suspected label errors of a dataset, from a model a studio job trained on it, and the decisions on them.

A model's stored records (`service.inspect.records.ModelRecords`) hold, for every image it trained or
validated on, the labels it learnt from (`y_true`) and held-out scores: out-of-fold for training
images, the best model's own for validation images. `service.inspect.suspects.rank` ranks the pairs
whose score contradicts the label (`missing`: not given, scored at or above the threshold; `wrong`:
given, scored below) against the best model's thresholds from the manifest, on the labels the model
learnt from; that ranking is computed once per model and cached (`Rankings`). Records name images as
the job exported them: their names in the dataset.

A ranked pair is *open* while its image is in the dataset, nobody has decided on it (`decisions`:
accept or reject, per dataset, whichever model suggested it) and the dataset's labels now do not
already agree with it (the label was edited since). Accepting applies the edit, decided from the
labels now: a label the image has is removed, one it lacks is added (source `suspect`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.errors import ManylabelError, RequestError
from service.inspect.records import ModelRecords
from service.inspect.suspects import Suspect, rank
from service.store import load_model
from service.studio.changes import current_version
from service.studio.db import Database
from service.studio.labelling import MAX_IMAGES, check_label, known_labels, load_current, write_changes

DECISIONS = ("accept", "reject")
DECISION_KEYS = ("image_id", "label", "decision")
CACHED_MODELS = 4


@dataclass(frozen=True)
class Ranking:
    """One model's suspects over its records, most suspicious first."""

    tag: str
    labels: list[str]
    thresholds: np.ndarray  # (L,) the best model's, aligned with labels
    names: np.ndarray  # records row -> image name
    pairs: list[Suspect]


@dataclass(frozen=True)
class Open:
    image_id: int
    name: str
    label: str
    kind: str  # missing | wrong
    score: float
    threshold: float

    def item(self) -> dict[str, Any]:
        """As GET /datasets/{id}/suspects lists it."""
        return asdict(self)

    def short(self) -> dict[str, Any]:
        """As an image of GET /datasets/{id}/images carries it."""
        return {"label": self.label, "kind": self.kind, "score": self.score, "threshold": self.threshold}


def load_ranking(tag: str) -> Ranking:
    """Read a stored model's records and manifest, rank its suspects (pure numpy over a few MB)."""
    stored = load_model(tag, verify=False)
    records = ModelRecords.load(stored.path, stored.manifest)
    train = (records.split == "train")[:, None]
    held_out = records.scores["best"].astype(np.float64)
    oof = records.oof.get("best")
    # Without out-of-fold scores a training image's score is the model's memory of it: not judged.
    held_out = np.where(train, oof, held_out) if oof is not None else np.where(train, np.nan, held_out)
    thresholds = np.asarray(stored.manifest.models["best"].thresholds, dtype=np.float64)
    pairs = rank(records.y_true, held_out, thresholds)
    return Ranking(stored.tag, list(stored.manifest.labels), thresholds, records.names, pairs)


class Rankings:
    """The rankings of the models asked for lately (LRU), each computed once (thread-safe)."""

    def __init__(self, size: int = CACHED_MODELS) -> None:
        self.size = size
        self._cache: OrderedDict[str, Ranking] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, tag: str) -> Ranking:
        with self._lock:
            if tag in self._cache:
                self._cache.move_to_end(tag)
                return self._cache[tag]
            loading = self._loading.setdefault(tag, threading.Lock())
        with loading:
            with self._lock:
                if tag in self._cache:
                    return self._cache[tag]
            try:
                ranking = load_ranking(tag)
            except ManylabelError as exc:
                raise RequestError(
                    f"model: {tag} cannot be read ({exc})", field="model", status=404
                ) from None
            with self._lock:
                self._cache[tag] = ranking
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return ranking

    def newest(self, db: Database, dataset: int) -> Ranking | None:
        """The ranking of the newest model a finished job trained on the dataset that is still stored."""
        for tag in trained_models(db, dataset):
            try:
                return self.get(tag)
            except RequestError:
                continue
        return None


def trained_models(db: Database, dataset: int) -> list[str]:
    """NAME:VERSION of every model a finished studio job trained on the dataset, newest first."""
    rows = db.all(
        "SELECT model FROM jobs WHERE dataset = ? AND state = 'done' AND model IS NOT NULL ORDER BY id DESC",
        (dataset,),
    )
    return [r[0] for r in rows]


def choose_model(db: Database, dataset: int, model: str | None) -> str:
    """The model a request names (NAME:VERSION, or NAME: its newest), which must have been trained on
    the dataset; none named: the newest. 404 naming `model` otherwise."""
    tags = trained_models(db, dataset)
    if model is None:
        if not tags:
            raise RequestError(
                f"model: no finished job has trained a model on dataset {dataset} yet (POST /jobs)",
                field="model",
                status=404,
            )
        return tags[0]
    named = [t for t in tags if model in (t, t.split(":", 1)[0])]
    if not named:
        shown = ", ".join(tags[:5]) or "none yet"
        raise RequestError(
            f"model: {model[:200]!r} was not trained on dataset {dataset} by a studio job (its: {shown})",
            field="model",
            status=404,
        )
    return named[0]


def open_suspects(db: Database, dataset: int, ranking: Ranking) -> list[Open]:
    """The ranking's pairs still open for the dataset (see the module docstring), in rank order."""
    ids = {r[1]: r[0] for r in db.all("SELECT id, name FROM images WHERE dataset = ?", (dataset,))}
    now: dict[str, set[str]] = {}
    for r in db.all("SELECT name, label FROM image_labels WHERE dataset = ?", (dataset,)):
        now.setdefault(r[0], set()).add(r[1])
    decided = {
        (r[0], r[1]) for r in db.all("SELECT image, label FROM decisions WHERE dataset = ?", (dataset,))
    }
    out = []
    for pair in ranking.pairs:
        name = str(ranking.names[pair.row])
        image = ids.get(name)
        label = ranking.labels[pair.label]
        if image is None or (image, label) in decided:
            continue
        if (label in now.get(name, ())) != (pair.kind == "wrong"):
            continue  # the labels were edited since: they agree with the model now
        out.append(Open(image, name, label, pair.kind, round(pair.score, 6), round(pair.threshold, 6)))
    return out


# --- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    image_id: int
    label: str
    decision: str


def parse_decisions(body: Any) -> list[Decision]:
    """`[{"image_id", "label", "decision": "accept"|"reject"}]`; a 400 naming `[i].field` otherwise."""
    if not isinstance(body, list) or not body:
        raise RequestError(
            'body: send a non-empty JSON list of {"image_id", "label", "decision"}', field="body"
        )
    if len(body) > MAX_IMAGES:
        raise RequestError(f"body: at most {MAX_IMAGES} decisions in one request", field="body")
    out, seen = [], set()
    for i, item in enumerate(body):
        if not isinstance(item, dict):
            raise RequestError(f'[{i}]: send an object {{"image_id", "label", "decision"}}', field=f"[{i}]")
        for key in item:
            if key not in DECISION_KEYS:
                raise RequestError(f"[{i}].{str(key)[:100]}: not expected", field=f"[{i}].{str(key)[:100]}")
        image = item.get("image_id")
        if not isinstance(image, int) or isinstance(image, bool):
            raise RequestError(f"[{i}].image_id: give the image's id (an integer)", field=f"[{i}].image_id")
        label = check_label(item.get("label"), f"[{i}].label")
        if item.get("decision") not in DECISIONS:
            raise RequestError(f"[{i}].decision: 'accept' or 'reject'", field=f"[{i}].decision")
        if (image, label) in seen:
            raise RequestError(
                f"[{i}].label: image {image}, {label!r} is decided twice", field=f"[{i}].label"
            )
        seen.add((image, label))
        out.append(Decision(image, label, item["decision"]))
    return out


def decide(db: Database, dataset: int, decisions: list[Decision], model: str | None) -> dict[str, int]:
    """Apply the accepted edits and remember every decision, in one transaction (one version bump)."""
    with db.transaction() as tx:
        current_version(tx, dataset)
        first = {}
        for i, d in enumerate(decisions):
            first.setdefault(d.image_id, f"[{i}].image_id")
        images = load_current(tx, dataset, list(first), list(first.values()))
        known = known_labels(tx, dataset)
        for i, d in enumerate(decisions):
            if d.label not in known:
                raise RequestError(
                    f"[{i}].label: {d.label!r} is not a label of this dataset", field=f"[{i}].label"
                )
        new = {image: set(images[image].labels) for image in first}
        accepted = [d for d in decisions if d.decision == "accept"]
        for d in accepted:
            new[d.image_id] ^= {d.label}  # removed when it has it, added when it lacks it
        touched = dict.fromkeys(d.image_id for d in accepted)
        _, version = write_changes(tx, dataset, [(images[i], frozenset(new[i])) for i in touched], "suspect")
        now = time.time()
        tx.executemany(
            "INSERT OR REPLACE INTO decisions (dataset, image, label, decision, model, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(dataset, d.image_id, d.label, d.decision, model, now) for d in decisions],
        )
    return {"accepted": len(accepted), "rejected": len(decisions) - len(accepted), "version": version}
