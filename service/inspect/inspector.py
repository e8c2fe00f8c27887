"""`Inspector`: one stored model's records and custom thresholds, answering as JSON-ready dicts.

The service's inspect routes and the CLI both call it: a route validates its query string into a
`service.inspect.queries` model and calls the method of the same name with ``query.arguments()``. The
numbers come from the pure functions in `service.inspect.views` and `service.inspect.review`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service import custom_thresholds
from service.errors import RequestError, ThresholdError
from service.inspect.records import SPLITS, ModelRecords
from service.inspect.review import diff, label_pairs, mislabel_candidates
from service.inspect.views import confusion, curves, predictions
from service.manifest import WHICH_MODELS, Manifest, SplitMetrics
from service.thresholds import Thresholds, check_choice, resolve

UPDATE_FIELDS = ("which", "set", "all", "reset")
# records.npz holds the scores training computed, in fp32: an int8 variant's are not among them
# (its validation numbers against fp32 are in GET /model's models.<which>.variants).
RECORDS_PRECISION = "fp32"


class Inspector:
    """A stored model's records and custom thresholds, answering the inspect questions as JSON-ready dicts.

    Every answer names the model, which model, the threshold profile and the thresholds it used.
    Threshold arguments, shared by every method that applies thresholds: ``profile`` (see
    `service.thresholds.resolve`; default the custom values once set), ``threshold`` (one value for every
    label) and ``thresholds`` (label -> value), applied for this call only.
    """

    def __init__(self, model_dir: Path, manifest: Manifest, *, tag: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.tag = tag or manifest.name
        self.records = ModelRecords.load(self.model_dir, manifest)
        self.custom = custom_thresholds.ThresholdFile(self.model_dir, manifest)

    @classmethod
    def from_stored(cls, stored) -> Inspector:
        """From a `service.store.StoredModel`."""
        return cls(stored.path, stored.manifest, tag=stored.tag)

    def thresholds(
        self, which: str = "best", *, profile: str | None = None, threshold: object = None, thresholds=None
    ) -> Thresholds:
        custom = self.custom.custom()
        return resolve(
            self.manifest, which, profile=profile, custom=custom, threshold=threshold, overrides=thresholds
        )

    def _head(self, which: str, t: Thresholds) -> dict:
        return {
            "model": self.tag,
            "which": which,
            "precision": RECORDS_PRECISION,
            "profile": t.profile,
            "overridden": list(t.overridden),
            "thresholds": dict(zip(self.manifest.labels, t.values.tolist(), strict=True)),
        }

    def statistics(self, which: str, split: str, t: Thresholds) -> SplitMetrics:
        entry = self.manifest.models[which]
        loss = entry.metrics[split].loss if split in entry.metrics else None
        return self.records.statistics(which, split, t.values, loss=loss)

    def stats(self, which: str = "best", split: str | None = None, **th: Any) -> dict:
        """Statistics of one split, or of train and validation, with per-label confusion counts."""
        t = self.thresholds(which, **th)
        splits = SPLITS if split is None else (check_choice("split", split, SPLITS),)
        out = {}
        for s in splits:
            out[s] = self.statistics(which, s, t).model_dump()
            out[s]["confusion"] = confusion(self.records, which, s, t.values)
        return {**self._head(which, t), "splits": out}

    def pr_curve(
        self,
        which: str = "best",
        split: str = "validation",
        *,
        label: str | None = None,
        max_points: int = 200,
        **th: Any,
    ) -> dict:
        t = self.thresholds(which, **th)
        c = curves(self.records, which, split, t.values, label=label, max_points=max_points)
        return {**self._head(which, t), "split": split, "label": label, **c}

    def predictions(self, which: str = "best", split: str = "validation", **kw: Any) -> dict:
        th = {k: kw.pop(k) for k in ("profile", "threshold", "thresholds") if k in kw}
        t = self.thresholds(which, **th)
        return {**self._head(which, t), **predictions(self.records, which, split, t.values, **kw)}

    def diff(self, split: str = "validation", *, profile: str | None = None, limit: int = 20) -> dict:
        """Best vs last, each at its own thresholds of ``profile``."""
        ts = {w: self.thresholds(w, profile=profile) for w in WHICH_MODELS}
        d = diff(
            self.records,
            check_choice("split", split, SPLITS),
            {w: t.values for w, t in ts.items()},
            limit=limit,
        )
        profiles = {w: t.profile for w, t in ts.items()}
        return {"model": self.tag, "precision": RECORDS_PRECISION, "profile": profiles, **d}

    def pairs(self, which: str = "best", split: str = "validation", *, top: int = 10, **th: Any) -> dict:
        t = self.thresholds(which, **th)
        return {
            **self._head(which, t),
            "split": split,
            **label_pairs(self.records, which, split, t.values, top=top),
        }

    def mislabelled(
        self, which: str = "best", split: str | None = None, *, limit: int = 50, min_gap: float = 0.5
    ) -> dict:
        items = mislabel_candidates(self.records, which, split=split, limit=limit, min_gap=min_gap)
        head = {"model": self.tag, "which": which, "precision": RECORDS_PRECISION}
        return {**head, "split": split, "min_gap": min_gap, "items": items}

    def image(self, split: str, name: str) -> bytes:
        """JPEG bytes of a train/validation image's thumbnail (RequestError 404 when unknown)."""
        return self.records.thumbnail(split, name)

    def custom_state(self) -> dict:
        """The persisted custom thresholds and the thresholds in force, for best and last."""
        return {"model": self.tag, **self.custom.describe()}

    def update_thresholds(self, body: Mapping[str, Any]) -> dict:
        """Persist a change: ``{"which": "best"|"last"|"both", and one of "set": {label: value},
        "all": value, "reset": true | [labels]}``; answers `custom_state()`. Default: best; both for
        a reset. Checked here rather than by a pydantic model so that a value is refused with the
        core's threshold message (`service.thresholds.check_threshold`), as the CLI refuses it."""
        if not isinstance(body, Mapping):
            raise RequestError("body: expected a JSON object", field="body")
        unknown = sorted(set(body) - set(UPDATE_FIELDS))
        if unknown:
            raise RequestError(
                f"body: unknown fields {unknown}; use which and one of set, all, reset", field=unknown[0]
            )
        # `is not` on purpose: `0 in (None, False)` is True, and {"all": 0} is a valid request.
        actions = [k for k in ("set", "all", "reset") if body.get(k) is not None and body.get(k) is not False]
        if len(actions) != 1:
            raise RequestError("body: give exactly one of set, all, reset", field="body")
        which = check_choice("which", body.get("which", "best"), (*WHICH_MODELS, custom_thresholds.BOTH))
        try:
            if actions == ["set"]:
                self.custom.set_values(body["set"], which=which)
            elif actions == ["all"]:
                self.custom.set_all(body["all"], which=which)
            else:
                labels = body["reset"]
                if labels is not True and not (
                    isinstance(labels, list) and all(isinstance(x, str) for x in labels)
                ):
                    raise RequestError("reset: give true or a list of labels", field="reset")
                which = which if "which" in body else custom_thresholds.BOTH
                self.custom.reset(which=which, labels=None if labels is True else labels)
        except ThresholdError as exc:
            raise RequestError(str(exc), field=actions[0]) from exc
        return self.custom_state()
