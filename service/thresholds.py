"""The one threshold rule: which per-label thresholds a request, a CLI call or a view uses.

Thresholds are data: a vector aligned with `Manifest.labels` (scikit-learn's
`FixedThresholdClassifier`). Resolution, in order:

1. the base, a *profile*: ``optimized`` (the manifest's max-F1 values), ``custom`` (those, replaced by
   the persisted custom values of `custom_thresholds.json`), ``high_precision`` / ``high_recall``
   (the training-time profiles). No profile means ``custom`` once any custom value is set for that
   model, else ``optimized``;
2. ``threshold``: one value for every label;
3. ``overrides``: label -> value for the labels it names.

A label is *above* when its score >= its threshold, compared in float64 as a JSON client would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from service.errors import RequestError, ThresholdError
from service.manifest import WHICH_MODELS, Manifest

PROFILES = ("optimized", "custom", "high_precision", "high_recall")


class CustomValues(Protocol):
    """What the resolver needs of `custom_thresholds.CustomThresholds`."""

    def values(self, which: str) -> dict[str, float]: ...


class Thresholds(NamedTuple):
    profile: str  # the base the values came from
    values: np.ndarray  # (L,) float64, aligned with the manifest's labels
    overridden: tuple[str, ...] = ()  # labels changed by `threshold` / `overrides`


def check_choice(field: str, value: object, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`; RequestError naming `field` otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise RequestError(f"{field}: {value!r} is not one of {list(choices)}", field=field)
    return value


def check_which(which: object) -> str:
    return check_choice("which", which, WHICH_MODELS)


def check_threshold(field: str, value: object, *, shown: str | None = None) -> float:
    """A threshold as a float in [0, 1]; ThresholdError naming `field` otherwise (NaN, bool, text...).

    `shown` is how the user wrote the value (a form's text), when that differs from `repr(value)`.
    """
    root = field.split("[", 1)[0]
    shown = repr(value) if shown is None else repr(shown[:100])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ThresholdError(f"{field}: {shown} is not a number; give a number in [0, 1]", field=root)
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ThresholdError(f"{field}: {shown} is outside [0, 1]; give a number in [0, 1]", field=root)
    return number


def check_values(manifest: Manifest, values: object, *, field: str = "thresholds") -> dict[str, float]:
    """Validate label -> value against the manifest's labels; returns label -> float."""
    if not isinstance(values, Mapping):
        raise ThresholdError(
            f"{field}: must be an object label -> threshold, e.g. {{\"cat\": 0.4}}; got {str(values)[:100]}",
            field=field,
        )
    known = set(manifest.labels)
    out = {}
    for label, value in values.items():
        if label not in known:
            raise ThresholdError(
                f"{field}: unknown label {label!r}; the model's labels are {manifest.labels}", field=field
            )
        out[label] = check_threshold(f"{field}[{label!r}]", value)
    return out


def parse_overrides(flag: str, text: str | None) -> dict[str, object] | None:
    """A command line's `--thresholds '{"cat": 0.4}'` as a dict (values checked later by `resolve`)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ThresholdError(f"{flag} {text[:100]!r} is not JSON; give e.g. '{{\"cat\": 0.4}}'") from None
    if not isinstance(value, dict):
        raise ThresholdError(f"{flag} must be a JSON object label -> threshold, e.g. '{{\"cat\": 0.4}}'")
    return value


def resolve(
    manifest: Manifest,
    which: str,
    *,
    profile: str | None = None,
    custom: CustomValues | None = None,
    threshold: object = None,
    overrides: Mapping[str, object] | None = None,
) -> Thresholds:
    """The thresholds one request uses (see the module docstring). RequestError / ThresholdError
    name the bad field: an unknown model, profile or label, or a value that is not in [0, 1]."""
    which = check_which(which)
    custom_values = custom.values(which) if custom is not None else {}
    if profile is None:
        profile = "custom" if custom_values else "optimized"
    profile = check_choice("profile", profile, PROFILES)
    entry = manifest.models[which]
    if profile in ("optimized", "custom"):
        values = list(entry.thresholds)
        if profile == "custom":
            pairs = zip(manifest.labels, values, strict=True)
            values = [custom_values.get(label, base) for label, base in pairs]
    elif profile in entry.profiles:
        values = list(entry.profiles[profile])
    else:
        raise RequestError(f"profile: this model has no {profile!r} thresholds (retrain it)", field="profile")
    changed: list[str] = []
    if threshold is not None:
        values = [check_threshold("threshold", threshold)] * len(values)
        changed = list(manifest.labels)
    if overrides:
        checked = check_values(manifest, overrides)
        index = {label: i for i, label in enumerate(manifest.labels)}
        for label, value in checked.items():
            values[index[label]] = value
        changed += [label for label in checked if label not in changed]
    return Thresholds(profile, np.asarray(values, dtype=np.float64), tuple(changed))


def apply_thresholds(scores: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N, L) scores -> (N, L) bool: a label is predicted when its score >= its threshold."""
    # Compared in float64, as a client reading the JSON scores and thresholds would.
    return np.asarray(scores, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
