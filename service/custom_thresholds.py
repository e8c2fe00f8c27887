"""Persisted threshold overrides: `custom_thresholds.json` beside `manifest.json` in a stored model.

The ONNX graphs and the manifest are never edited (their sha256 is checked at every load); a user's
choice of thresholds lives in its own small file, in the same store folder as the model version it
was tuned on. Once the file holds a value for a label, the service and the inspect views use it
instead of the optimised (max-F1) threshold; a request can still ask for ``profile=optimized``.

The file, all keys required, labels optional (a label not named keeps its optimised threshold)::

    {
      "schema_version": 1,
      "updated_at": "2025-01-31T12:00:00Z",
      "best": {"cat": 0.4, "dog": 0.55},
      "last": {}
    }

``set_values`` / ``set_all`` / ``reset`` read, change and atomically rewrite the file (temp file,
fsync, rename) under an advisory lock on the model folder, so concurrent writers (service workers, the
CLI) never lose each other's update and a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from service import thresholds
from service.errors import CustomThresholdsError, ThresholdError, first_error
from service.files import atomic_write_bytes
from service.manifest import WHICH_MODELS, Manifest
from service.thresholds import check_threshold, check_values

CUSTOM_THRESHOLDS_FILE = "custom_thresholds.json"
SCHEMA_VERSION = 1
BOTH = "both"  # `which` value that changes the best and the last model together

try:  # advisory locking is POSIX-only; elsewhere the atomic rename still protects readers
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None




class CustomThresholds(BaseModel):
    """The content of custom_thresholds.json: per model (best / last), label -> threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    updated_at: datetime | None = None
    best: dict[str, float] = {}
    last: dict[str, float] = {}

    def values(self, which: str) -> dict[str, float]:
        return dict(self.best if which == "best" else self.last)

    def is_empty(self) -> bool:
        return not (self.best or self.last)


def _models(which: str) -> tuple[str, ...]:
    if which == BOTH:
        return WHICH_MODELS
    if which not in WHICH_MODELS:
        raise ThresholdError(f"which: {which!r} is not one of best, last, both", field="which")
    return (which,)


# --- reading and writing ----------------------------------------------------------------------------


def path_for(model_dir: Path) -> Path:
    return Path(model_dir) / CUSTOM_THRESHOLDS_FILE


def read(model_dir: Path, manifest: Manifest) -> CustomThresholds:
    """The custom thresholds of a stored model; empty when none were set."""
    path = path_for(model_dir)
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return CustomThresholds()
    except (OSError, ValueError) as exc:
        raise CustomThresholdsError(f"{path} is not readable JSON ({exc}); {_RESET_HINT}") from exc
    return _validate(raw, manifest, path)


_RESET_HINT = "run `manylabel thresholds NAME --reset` to go back to the optimised thresholds"


def _validate(raw: object, manifest: Manifest, path: Path) -> CustomThresholds:
    try:
        custom = CustomThresholds.model_validate(raw)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise CustomThresholdsError(f"{path}: {where}: {message}; {_RESET_HINT}") from exc
    if custom.schema_version != SCHEMA_VERSION:
        raise CustomThresholdsError(
            f"{path}: schema_version {custom.schema_version} is not supported (this manylabel reads "
            f"{SCHEMA_VERSION}); upgrade manylabel, or {_RESET_HINT}"
        )
    try:
        for which in WHICH_MODELS:
            check_values(manifest, custom.values(which), field=which)
    except ThresholdError as exc:
        raise CustomThresholdsError(f"{path}: {exc}; {_RESET_HINT}") from exc
    return custom


def write(model_dir: Path, custom: CustomThresholds) -> Path:
    """Atomically replace custom_thresholds.json (or remove it when `custom` is empty)."""
    path = path_for(model_dir)
    try:
        if custom.is_empty():
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, custom.model_dump_json(indent=2).encode())
    except OSError as exc:
        raise CustomThresholdsError(
            f"cannot write {path}: {exc} (is the model store read-only?)", status=409
        ) from exc
    return path


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the model folder for one read-change-write."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _update(model_dir: Path, manifest: Manifest, which: str, change) -> CustomThresholds:
    models = _models(which)
    with _locked(Path(model_dir)):
        custom = read(model_dir, manifest)
        per_model = {w: change(custom.values(w)) if w in models else custom.values(w) for w in WHICH_MODELS}
        updated = CustomThresholds(updated_at=datetime.now(UTC), **per_model)
        write(model_dir, updated)
    return updated


def set_values(
    model_dir: Path, manifest: Manifest, values: Mapping[str, object], *, which: str = "best"
) -> CustomThresholds:
    """Set the named labels' thresholds (others keep theirs); `which` is best, last or both."""
    checked = check_values(manifest, values)
    if not checked:
        raise ThresholdError("thresholds: name at least one label, e.g. cat=0.4")
    return _update(model_dir, manifest, which, lambda old: {**old, **checked})


def set_all(model_dir: Path, manifest: Manifest, value: object, *, which: str = "best") -> CustomThresholds:
    """One threshold for every label ("Set all"), replacing any per-label value."""
    number = check_threshold("all", value)
    return _update(model_dir, manifest, which, lambda old: dict.fromkeys(manifest.labels, number))


def reset(
    model_dir: Path, manifest: Manifest, *, which: str = BOTH, labels: Sequence[str] | None = None
) -> CustomThresholds:
    """Back to the optimised thresholds: for `labels` only when given, else for every label."""
    if labels:
        unknown = [label for label in labels if label not in manifest.labels]
        if unknown:
            raise ThresholdError(f"reset: unknown labels {unknown}; the model's labels are {manifest.labels}")
    if not labels and which == BOTH:  # no read: this must work on a damaged file too
        with _locked(Path(model_dir)):
            write(model_dir, CustomThresholds())
        return CustomThresholds()
    drop = set(labels or manifest.labels)
    return _update(model_dir, manifest, which, lambda old: {k: v for k, v in old.items() if k not in drop})


# --- what the service uses ---------------------------------------------------------------------------


def effective(manifest: Manifest, which: str, custom: CustomThresholds | None = None) -> list[float]:
    """The thresholds in force: the optimised ones, replaced by the custom value where one is set."""
    return thresholds.resolve(manifest, which, profile="custom", custom=custom).values.tolist()


class ThresholdFile:
    """custom_thresholds.json of one stored model, re-read only when the file changes.

    Several service workers share one model folder: a POST /thresholds handled by one worker must be
    seen by the others, so each call stats the file (microseconds) and re-reads it on a change.
    """

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self._file = str(path_for(self.model_dir))  # a str: os.stat of a Path costs 5 us per request
        self._key: tuple | None = None
        self._custom = CustomThresholds()
        self.pinned: CustomThresholds | None = None

    @classmethod
    def pinned_to(cls, model_dir: Path, manifest: Manifest, text: str) -> ThresholdFile:
        """Custom thresholds fixed by the deployment (MANYLABEL_THRESHOLDS, e.g. from a ConfigMap), the
        same in every replica: the file is ignored and writes are refused (409) with how to change
        them. A bad value is a start-up error (SettingsError-like ManylabelError), never a 4xx later."""
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CustomThresholdsError(f"MANYLABEL_THRESHOLDS is not JSON ({exc})", status=500) from exc
        try:
            custom = _validate(raw, manifest, Path("MANYLABEL_THRESHOLDS"))
        except CustomThresholdsError as exc:
            raise CustomThresholdsError(str(exc).split("; run ")[0], status=500) from exc
        watched = cls(model_dir, manifest)
        watched.pinned = custom
        return watched

    def _writable(self) -> None:
        if self.pinned is not None:
            raise CustomThresholdsError(
                "thresholds are pinned by the deployment (MANYLABEL_THRESHOLDS); change that value (in "
                "Kubernetes: the ConfigMap, then roll the Deployment) instead",
                status=409,
            )

    def custom(self) -> CustomThresholds:
        if self.pinned is not None:
            return self.pinned
        try:
            st = os.stat(self._file)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            key = None
        if key != self._key:
            self._custom = read(self.model_dir, self.manifest) if key else CustomThresholds()
            self._key = key
        return self._custom

    def effective(self, which: str) -> list[float]:
        return effective(self.manifest, which, self.custom())

    def describe(self) -> dict:
        """JSON-ready: when last changed, the custom values and the thresholds in force, per model."""
        custom = self.custom()
        labels = self.manifest.labels
        return {
            "updated_at": custom.updated_at.isoformat() if custom.updated_at else None,
            "pinned": self.pinned is not None,
            "custom": {w: custom.values(w) for w in WHICH_MODELS},
            "thresholds": {
                w: dict(zip(labels, effective(self.manifest, w, custom), strict=True)) for w in WHICH_MODELS
            },
        }

    def set_values(self, values: Mapping[str, object], *, which: str = "best") -> CustomThresholds:
        self._writable()
        return set_values(self.model_dir, self.manifest, values, which=which)

    def set_all(self, value: object, *, which: str = "best") -> CustomThresholds:
        self._writable()
        return set_all(self.model_dir, self.manifest, value, which=which)

    def reset(self, *, which: str = BOTH, labels: Sequence[str] | None = None) -> CustomThresholds:
        self._writable()
        return reset(self.model_dir, self.manifest, which=which, labels=labels)
