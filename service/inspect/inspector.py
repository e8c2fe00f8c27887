"""`Inspector`: one stored model's records and custom thresholds, answering as JSON-ready dicts.

The service's inspect endpoints and the CLI both call it; `Inspector.query(endpoint, params)` turns an
HTTP query string into one of its calls, so each endpoint is a thin wrapper. The numbers come from the
pure functions in `service.inspect`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service import custom_thresholds
from service.errors import ThresholdError
from service.inspect import (
    SPLITS,
    InspectError,
    ModelRecords,
    Thresholds,
    check_choice,
    confusion,
    curves,
    predictions,
    resolve_thresholds,
)
from service.inspect_review import diff, label_pairs, mislabel_candidates
from service.manifest import WHICH_MODELS, Manifest, SplitMetrics

# --- one stored model, for the service and the CLI --------------------------------------------------


def _as_int(field: str, value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InspectError(f"{field}: {value!r} is not an integer", field=field) from None


def _as_float(field: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InspectError(
            f"{field}: {value!r} is not a number; give a number in [0, 1]", field=field
        ) from None


def _as_object(field: str, value: object) -> dict:
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InspectError(
            f'{field}: {value!r} is not a JSON object label -> threshold, e.g. {{"cat": 0.4}}', field=field
        )
    return parsed


# query parameter -> (keyword argument, parser); "model" is best | last, as in POST /predict
_THRESHOLD_PARAMS = {
    "model": ("which", str),
    "profile": ("profile", str),
    "threshold": ("threshold", _as_float),
    "thresholds": ("thresholds", _as_object),
}
_SPLIT = {"split": ("split", str)}
_QUERY = {
    "stats": {**_THRESHOLD_PARAMS, **_SPLIT},
    "pr_curve": {
        **_THRESHOLD_PARAMS,
        **_SPLIT,
        "label": ("label", str),
        "max_points": ("max_points", _as_int),
    },
    "predictions": {
        **_THRESHOLD_PARAMS,
        **_SPLIT,
        **{k: (k, str) for k in ("filter", "label", "sort", "order", "view")},
        **{k: (k, _as_int) for k in ("page", "page_size")},
    },
    "diff": {**_SPLIT, "profile": ("profile", str), "limit": ("limit", _as_int)},
    "pairs": {**_THRESHOLD_PARAMS, **_SPLIT, "top": ("top", _as_int)},
    "mislabelled": {
        "model": ("which", str),
        **_SPLIT,
        "limit": ("limit", _as_int),
        "min_gap": ("min_gap", _as_float),
    },
}


class Inspector:
    """A stored model's records and custom thresholds, answering the inspect questions as JSON-ready dicts.

    Every answer names the model, which model, the threshold profile and the thresholds it used.
    Threshold arguments, shared by every method that applies thresholds: ``profile`` (see
    `resolve_thresholds`; default the custom values once set), ``threshold`` (one value for every
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
        return resolve_thresholds(
            self.manifest, which, profile=profile, custom=custom, threshold=threshold, overrides=thresholds
        )

    def _head(self, which: str, t: Thresholds) -> dict:
        return {
            "model": self.tag,
            "which": which,
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
        return {"model": self.tag, "profile": {w: t.profile for w, t in ts.items()}, **d}

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
        return {"model": self.tag, "which": which, "split": split, "min_gap": min_gap, "items": items}

    def image(self, split: str, name: str) -> bytes:
        """JPEG bytes of a train/validation image's thumbnail (InspectError 404 when unknown)."""
        return self.records.thumbnail(split, name)

    def custom_state(self) -> dict:
        """The persisted custom thresholds and the thresholds in force, for best and last."""
        return {"model": self.tag, **self.custom.describe()}

    def update_thresholds(self, body: Mapping[str, Any]) -> dict:
        """Persist a change: ``{"model": "best"|"last"|"both", and one of "set": {label: value},
        "all": value, "reset": true | [labels]}``; answers `custom_state()`. Default model: best."""
        if not isinstance(body, Mapping):
            raise InspectError("body: expected a JSON object", field="body")
        unknown = sorted(set(body) - {"model", "set", "all", "reset"})
        if unknown:
            raise InspectError(
                f"body: unknown fields {unknown}; use model and one of set, all, reset", field=unknown[0]
            )
        # `is not` on purpose: `0 in (None, False)` is True, and {"all": 0} is a valid request.
        actions = [k for k in ("set", "all", "reset") if body.get(k) is not None and body.get(k) is not False]
        if len(actions) != 1:
            raise InspectError("body: give exactly one of set, all, reset", field="body")
        which = check_choice("model", body.get("model", "best"), (*WHICH_MODELS, custom_thresholds.BOTH))
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
                    raise InspectError("reset: give true or a list of labels", field="reset")
                which = which if "model" in body else custom_thresholds.BOTH
                self.custom.reset(which=which, labels=None if labels is True else labels)
        except ThresholdError as exc:
            raise InspectError(str(exc), field=actions[0]) from exc
        return self.custom_state()

    def query(self, endpoint: str, params: Mapping[str, str]) -> dict:
        """Answer ``GET /{endpoint}?{params}`` (string values, as in a query string)."""
        spec = _QUERY.get(endpoint)
        if spec is None:
            raise InspectError(f"unknown inspect endpoint {endpoint!r}", status=404)
        params = {k: v for k, v in params.items() if v != ""}  # an empty form field means "not given"
        unknown = sorted(set(params) - set(spec))
        if unknown:
            raise InspectError(f"{unknown[0]}: unknown parameter; expected {sorted(spec)}", field=unknown[0])
        kwargs = {spec[k][0]: spec[k][1](k, v) if spec[k][1] is not str else v for k, v in params.items()}
        try:
            return getattr(self, endpoint)(**kwargs)
        except ThresholdError as exc:
            field = str(exc).split(":", 1)[0].split("[", 1)[0]
            raise InspectError(
                str(exc), field=field if field in ("threshold", "thresholds") else "thresholds"
            ) from exc
