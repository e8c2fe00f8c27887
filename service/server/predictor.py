"""In-process prediction: the one code path behind `manylabel predict` and the HTTP service.

Both decode with `service.preprocess.load_image` and the manifest's preprocessing, score with the
same onnxruntime sessions and apply thresholds with `runtime.apply_thresholds`, so a CLI run and
an HTTP call on the same images give the same scores. The service adds only the asynchronous
path: decoding in a thread pool and images of concurrent requests batched by `batcher.Batcher`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import numpy as np

from service.custom_thresholds import ThresholdFile
from service.errors import ImageTooLargeError, InvalidImageError, RequestError, ThresholdError
from service.manifest import WHICH_MODELS
from service.preprocess import load_image
from service.server.batcher import Batcher
from service.server.http.uploads import IMAGES_FIELD, InputFile
from service.server.request_images import RequestImages
from service.server.runtime import ModelRuntime
from service.server.settings import Settings, get_settings
from service.store import StoredModel, load_model
from service.thresholds import apply_thresholds, check_which, resolve

logger = logging.getLogger(__name__)

BatchObserver = Callable[[str, int, float], None]  # (which, batch size, seconds)

# A request of one JPEG at most this big, arriving while its batcher has nothing else to do, is
# decoded and scored on the event loop (`Batcher.run_alone`): no thread hand-over, and the loop is
# held for one call. JPEG only, as its decode time follows its size (Pillow decodes at a reduced
# scale): measured here, a 1000-px 130 KiB photo 1.3 ms, a 12-Mpx 496 KiB one 16 ms, plus ~7 ms of
# inference; a PNG of a few KiB can hold 60 Mpx.
INLINE_MAX_BYTES = 512 * 1024
JPEG_START = b"\xff\xd8"


def _inline(files: Sequence[InputFile]) -> bool:
    """One small JPEG: a request `predict_async` may score on the event loop when it is alone."""
    return len(files) == 1 and len(files[0].data) <= INLINE_MAX_BYTES and files[0].data[:2] == JPEG_START


@dataclass(frozen=True)
class ImagePrediction:
    filename: str  # as the client named it; never used as a path
    scores: dict[str, float]
    predicted: list[str]  # labels at or above their threshold, in label order
    above: dict[str, bool]
    thresholds: dict[str, float]


@dataclass(frozen=True)
class Predictions:
    model: str
    version: str
    which: str
    precision: str  # the graph that scored: fp32 or int8
    labels: list[str]
    images: list[ImagePrediction]

    def to_dict(self) -> dict[str, Any]:
        """The `/predict` answer."""
        return {
            "model": self.model,
            "version": self.version,
            "which": self.which,
            "precision": self.precision,
            "labels": self.labels,
            "count": len(self.images),
            "images": [image.__dict__ for image in self.images],  # flat already: no deep asdict copy
        }


class Predictor:
    """A stored model, opened and warmed up, ready to score images."""

    def __init__(
        self, stored: StoredModel, settings: Settings | None = None, *, on_batch: BatchObserver | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.stored = stored
        self.manifest = stored.manifest
        self.labels = list(self.manifest.labels)
        if self.settings.thresholds:  # pinned by the deployment: the same in every replica
            self.custom = ThresholdFile.pinned_to(stored.path, self.manifest, self.settings.thresholds)
        else:  # custom_thresholds.json, when saved (POST /thresholds, `manylabel thresholds`)
            self.custom = ThresholdFile(stored.path, self.manifest)
        self._plain: dict[str, tuple[object, list[float]]] = {}  # which -> (custom, its thresholds)
        self.runtime = ModelRuntime(stored.path, self.manifest, self.settings)
        self.runtime.warm_up()
        self.tuning = self.runtime.tuning
        self.decode_pool = ThreadPoolExecutor(self.tuning.decode_threads, thread_name_prefix="decode")
        self._batchers = {  # one per (which, precision) served
            (which, precision): Batcher(
                lambda batch, which=which, precision=precision: self.runtime.run(which, batch, precision),
                infer_crowded=lambda batch, which=which, precision=precision: self.runtime.run(
                    which, batch, precision, crowded=True
                ),
                workers=self.tuning.inference_workers,
                max_batch_size=self.tuning.batch_size(precision),
                max_latency_ms=self.tuning.max_latency_ms,
                max_queue=self.settings.max_queue,
                on_batch=(lambda n, s, which=which: on_batch(which, n, s)) if on_batch else None,
                name=f"infer-{which}-{precision}",
            )
            for which, precision in self.runtime.graphs
        }
        # Images of one request in flight at once: enough to keep every thread busy, few enough
        # that a 1000-image zip neither holds 1000 decoded arrays nor fills the queue alone.
        self._window = 2 * (self.tuning.decode_threads + self.tuning.inference_workers)

    @classmethod
    def load(
        cls, name: str, version: str | None = None, settings: Settings | None = None, **kw: Any
    ) -> Predictor:
        """Open `name[:version]` (latest by default) from the model store."""
        return cls(load_model(name, version), settings or get_settings(), **kw)

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        for batcher in self._batchers.values():
            batcher.close()

    # --- thresholds and decoding ----------------------------------------------------------------

    def thresholds(
        self,
        which: str = "best",
        *,
        threshold: float | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> list[float]:
        """The thresholds a request uses (`service.thresholds.resolve`): the saved custom ones, else
        the manifest's optimised ones, then `threshold`, then `overrides`."""
        custom = self.custom.custom()  # re-reads custom_thresholds.json only when it changed
        plain = threshold is None and not overrides
        if plain and (kept := self._plain.get(which)) is not None and kept[0] is custom:
            return list(kept[1])  # most requests: resolved once per change of the saved thresholds
        values = resolve(
            self.manifest, which, custom=custom, threshold=threshold, overrides=overrides
        ).values.tolist()
        if plain:
            self._plain[which] = (custom, values)
        return list(values)

    def decode(self, file: InputFile) -> np.ndarray:
        """Bytes -> (S, S, 3) uint8, exactly as training decodes. Raises RequestError (400 / 413)."""
        try:
            return load_image(
                file.data,
                self.manifest.preprocessing,
                name=repr(file.name or "(unnamed)"),
                max_pixels=self.settings.max_pixels,
            )
        except ImageTooLargeError as exc:
            raise RequestError(
                f"{IMAGES_FIELD}: {exc}", status=413, field=IMAGES_FIELD, file=file.name
            ) from exc
        except InvalidImageError as exc:
            message = str(exc) if str(exc) != "empty file" else f"{file.name!r}: empty file"
            raise RequestError(f"{IMAGES_FIELD}: {message}", field=IMAGES_FIELD, file=file.name) from exc

    # --- prediction -----------------------------------------------------------------------------

    async def predict_async(
        self,
        files: Sequence[InputFile],
        *,
        which: str = "best",
        thresholds: Sequence[float] | None = None,
        precision: str | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> Predictions:
        """For the service: decode off the event loop, share inference calls with other requests.

        The event loop only starts the request and is woken once, when every image is scored.
        `precision` None: the model's default (`GET /model`'s precision.default).
        `alone`, when given, tells whether this request is the only one in progress and comes from
        the only recent client (`Reservation.alone`): one small JPEG of a request alone, with its
        batcher idle, is decoded and scored right here instead (`INLINE_MAX_BYTES`). Requests that
        arrived meanwhile get one loop turn to start first.
        """
        thresholds = self._check(which, thresholds)
        precision = self.runtime.precision(which, precision)  # RequestError when not served
        if not files:
            empty = np.zeros((0, len(self.labels)), np.float32)
            return self._predictions(files, empty, which, thresholds, precision)
        batcher = self._batchers[(which, precision)]
        loop = asyncio.get_running_loop()
        if alone is not None and _inline(files) and alone():
            await asyncio.sleep(0)  # requests whose bytes arrived meanwhile start (and count) first
            # The batch metrics go to call_soon: observed once the answer is sent.
            row = batcher.run_alone(lambda: self.decode(files[0]), loop.call_soon) if alone() else None
            if row is not None:  # None: the batcher was not idle
                return self._predictions(files, row[None], which, thresholds, precision)
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        RequestImages(self, files, batcher, loop, future, self._window).start()
        rows = await future
        return self._predictions(files, np.stack(rows), which, thresholds, precision)

    def _check(self, which: str, thresholds: Sequence[float] | None) -> list[float]:
        check_which(which)
        if thresholds is None:
            return self.thresholds(which)
        if len(thresholds) != len(self.labels):
            raise ThresholdError(f"{len(thresholds)} thresholds for {len(self.labels)} labels")
        return list(thresholds)

    def _predictions(
        self,
        files: Sequence[InputFile],
        scores: np.ndarray,
        which: str,
        thresholds: list[float],
        precision: str,
    ) -> Predictions:
        above = apply_thresholds(scores, thresholds).tolist()
        used = dict(zip(self.labels, thresholds, strict=True))
        images = []
        for file, row, flags in zip(files, scores.tolist(), above, strict=True):
            images.append(
                ImagePrediction(
                    filename=file.name,
                    scores=dict(zip(self.labels, row, strict=True)),
                    predicted=[label for label, flag in zip(self.labels, flags, strict=True) if flag],
                    above=dict(zip(self.labels, flags, strict=True)),
                    thresholds=used,
                )
            )
        return Predictions(
            model=self.stored.name,
            version=self.stored.version,
            which=which,
            precision=precision,
            labels=self.labels,
            images=images,
        )

    # --- description ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What `GET /model` answers: the manifest's essentials, provider and serving settings."""
        m = self.manifest
        models = {}
        for which in WHICH_MODELS:
            entry = m.models[which]
            models[which] = {
                "file": entry.file,
                "epoch": entry.epoch,
                "val_loss": entry.val_loss,
                "thresholds": m.thresholds(which),
                "threshold_source": entry.threshold_source,
                "threshold_fallbacks": entry.threshold_fallbacks,
                "profiles": {k: dict(zip(m.labels, v, strict=True)) for k, v in entry.profiles.items()},
                "metrics": {split: s.model_dump(mode="json") for split, s in entry.metrics.items()},
                "precisions": list(self.runtime.precisions[which]),  # served; the first is the default
                "variants": {p: v.model_dump(mode="json") for p, v in entry.variants.items()},
            }
        report = self.runtime.provider
        return {
            "name": self.stored.name,
            "version": self.stored.version,
            "tag": self.stored.tag,
            "created_at": m.created_at.isoformat(),
            "labels": m.labels,
            "label_counts": m.label_counts,
            "backbone": m.backbone.model_dump(mode="json"),
            "preprocessing": m.preprocessing.model_dump(mode="json"),
            "models": models,
            "provider": {"requested": report.requested, "active": report.active, "note": report.note},
            "precision": self.runtime.precision_summary(),
            "serving": {
                **asdict(self.tuning),
                "max_queue": self.settings.max_queue,
                "max_files": self.settings.max_files,
                "max_request_bytes": self.settings.max_request_bytes,
                "max_zip_bytes": self.settings.max_zip_bytes,
                "max_inflight_bytes": self.settings.max_inflight_bytes,
                "max_pixels": self.settings.max_pixels,
            },
            "versions": {
                "schema": m.schema_version,
                **{pkg: _version(pkg) for pkg in ("manylabel", "bentoml", "onnxruntime-gpu")},
            },
        }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
