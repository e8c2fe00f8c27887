"""The model manifest: the one contract between training and serving.

Training writes `manifest.json` beside `best.onnx` and `last.onnx`; the service reads it and
trusts nothing else. It is pure pydantic (no torch, no onnx), so both sides import it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ManifestError, first_error
from service.files import atomic_write_bytes, sha256_file

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WHICH_MODELS = ("best", "last")
Which = Literal["best", "last"]
Split = Literal["train", "validation"]
# fp32 is ModelEntry.file, the exported graph; int8 is an optional calibrated copy (ModelEntry.variants).
Precision = Literal["fp32", "int8"]
PRECISIONS = ("fp32", "int8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """How an image becomes the model input. Normalisation happens inside the ONNX graph."""

    image_size: int = Field(224, ge=16, le=4096, description="square side the image is resized to")
    resize: Literal["stretch"] = "stretch"  # whole image, no crop: a crop could cut a label out
    resample: Literal["bilinear"] = "bilinear"
    color: Literal["RGB"] = "RGB"
    exif_transpose: bool = True
    jpeg_draft: bool = True  # Pillow DCT-domain downscale before resize (same in training)
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    input_name: str = "image"
    input_dtype: Literal["uint8"] = "uint8"
    input_layout: Literal["NHWC"] = "NHWC"
    # Applied in-graph: x = (pixel - mean) / std, the normalisation the backbone weights expect.
    mean: float = 127.0
    std: float = 128.0


class Backbone(_Strict):
    id: str
    package: str
    feature_dim: int = Field(ge=1)


class FileEntry(_Strict):
    path: str = Field(min_length=1, max_length=1024)  # relative to the model folder, POSIX separators
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _inside(cls, path: str) -> str:
        # An imported model must never make the service hash, or the store write, outside its folder.
        parts = PurePosixPath(path).parts
        if path.startswith(("/", "\\")) or "\\" in path or ":" in path or "\x00" in path or ".." in parts:
            raise ValueError(f"{path!r} must be a relative path inside the model folder (no '..', '\\', ':')")
        return path


class LabelMetrics(_Strict):
    support: int
    precision: float
    recall: float
    f1: float
    ap: float | None  # None when the label has no positive in the split


class SplitMetrics(_Strict):
    images: int
    accuracy: float  # exact match: an image is correct only if every label is right
    label_accuracy: float  # 1 - Hamming loss
    micro_precision: float
    micro_recall: float
    micro_f1: float
    map: float | None
    loss: float | None = None
    per_label: dict[str, LabelMetrics]


class VariantCheck(_Strict):
    """A quantized variant against its fp32 original on the same validation images and thresholds."""

    images: int = Field(ge=0)
    map_fp32: float | None
    map: float | None  # the variant's
    micro_f1_fp32: float
    micro_f1: float
    max_score_diff: float  # largest |variant - fp32| over every image and label
    mean_score_diff: float


class Variant(_Strict):
    """A lower-precision copy of a model (int8): kept and listed in `files`, or dropped with a reason.

    A dropped variant keeps its numbers, so the manifest says why the service runs fp32 only.
    """

    file: str | None = None  # None when not kept (the file is not saved)
    kept: bool
    reason: str | None = None  # why it was not kept
    method: str = ""  # how it was made, e.g. "static QDQ, per-channel int8 weights, uint8 activations"
    calibration_images: int = Field(0, ge=0)
    validation: VariantCheck | None = None

    @model_validator(mode="after")
    def _file_when_kept(self) -> Variant:
        if self.kept != (self.file is not None):
            raise ValueError("a kept variant names its file; a dropped one has none (file: null)")
        return self


class ModelEntry(_Strict):
    """One exported model (best or last) with its thresholds and statistics."""

    file: str  # the fp32 graph
    epoch: int = Field(ge=0)
    val_loss: float | None
    thresholds: list[float]  # aligned with Manifest.labels
    threshold_source: Literal["oof", "train", "validation"]
    threshold_fallbacks: dict[str, str] = {}  # label -> why it got the fallback value
    profiles: dict[str, list[float]] = {}  # e.g. high_precision / high_recall, aligned with labels
    metrics: dict[str, SplitMetrics] = {}  # split -> statistics at `thresholds`
    # Quantized copies, same thresholds. Absent in manifests written before int8: fp32 only.
    variants: dict[Literal["int8"], Variant] = {}

    @property
    def precisions(self) -> list[str]:
        """The precisions this model can run at: fp32, then every kept variant."""
        return ["fp32", *(p for p in PRECISIONS if p in self.variants and self.variants[p].kept)]

    def file_for(self, precision: str) -> str:
        """The graph of `precision`; KeyError when the model has no kept variant of it."""
        if precision == "fp32":
            return self.file
        variant = self.variants.get(precision)  # type: ignore[call-overload]
        if variant is None or variant.file is None:
            raise KeyError(precision)
        return variant.file


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    labels: list[str] = Field(min_length=1)
    label_counts: dict[str, dict[str, int]] = {}  # split -> label -> positive images
    backbone: Backbone
    preprocessing: Preprocessing = Preprocessing()
    output_name: str = "scores"
    models: dict[str, ModelEntry]
    files: list[FileEntry] = []
    training: dict = {}  # the resolved TrainConfig, for provenance

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this manylabel reads "
                f"{SCHEMA_VERSION}); retrain or upgrade manylabel"
            )
        if len(set(self.labels)) != len(self.labels) or any(not s.strip() for s in self.labels):
            raise ValueError("labels must be unique, non-empty names")
        missing = [w for w in WHICH_MODELS if w not in self.models]
        if missing:
            raise ValueError(f"models must include {missing}")
        for which, entry in self.models.items():
            for kind, values in {"thresholds": entry.thresholds, **entry.profiles}.items():
                if len(values) != len(self.labels):
                    raise ValueError(
                        f"models.{which}.{kind} has {len(values)} values for {len(self.labels)} labels"
                    )
                bad = [v for v in values if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
                if bad:
                    raise ValueError(f"models.{which}.{kind} has values outside [0, 1]: {bad}")
        return self

    def thresholds(self, which: str) -> dict[str, float]:
        return dict(zip(self.labels, self.models[which].thresholds, strict=True))

    # --- persistence -------------------------------------------------------------------------

    def write(self, directory: Path) -> Path:
        """Atomically write manifest.json into `directory`."""
        path = Path(directory) / MANIFEST_FILE
        atomic_write_bytes(path, self.model_dump_json(indent=2).encode())
        return path

    @classmethod
    def read(cls, directory: Path, *, verify: bool = True) -> Manifest:
        """Read and validate manifest.json; with `verify`, check every listed file's sha256."""
        path = Path(directory) / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ManifestError(f"{path} does not exist: is this a manylabel model?") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not readable JSON: {exc}") from exc
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as exc:
            where, message = first_error(exc)
            raise ManifestError(f"{path}: {where}: {message}") from exc
        if verify:
            manifest.verify_files(Path(directory))
        return manifest

    def verify_files(self, directory: Path) -> None:
        listed = {f.path for f in self.files}
        for which, entry in self.models.items():
            if entry.file not in listed:
                raise ManifestError(f"models.{which}.file {entry.file!r} is not in files")
            for precision, variant in entry.variants.items():
                if variant.file is not None and variant.file not in listed:
                    raise ManifestError(
                        f"models.{which}.variants.{precision}.file {variant.file!r} is not in files"
                    )
        for entry in self.files:
            path = Path(directory) / entry.path
            if not path.is_file():
                raise ManifestError(f"{path} is listed in the manifest but missing")
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ManifestError(
                    f"{path} has sha256 {digest[:12]}…, the manifest expects {entry.sha256[:12]}…:"
                    " the model files were modified or half-written"
                )




def file_entry(directory: Path, relpath: str) -> FileEntry:
    path = Path(directory) / relpath
    return FileEntry(path=relpath, sha256=sha256_file(path), size=path.stat().st_size)
