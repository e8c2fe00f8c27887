"""The manylabel BentoML service: `bentoml serve service.service:ManyLabel`.

Request path, kept thin because on a 2-core CPU every millisecond of Python is a millisecond not
spent decoding or inferring:
  UploadMiddleware parses the multipart body in memory (BentoML's own parser answers 500 to bad
  bodies and loses file names) -> the API method validates the options -> images are decoded in a
  thread pool -> `runtime.Batcher` groups images of concurrent requests into onnxruntime calls on
  worker threads -> the answer is built from plain numbers.
The input specs below only document the form for OpenAPI and BentoML's client; BentoML never
parses client bodies for these routes.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
from pathlib import Path
from typing import Any, Literal

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

with bentoml.importing():
    from service.bundles import FORMATS, make_bundle
    from service.custom_thresholds import ThresholdFile
    from service.errors import ThresholdError
    from service.inspect_app import inspect_app, load_inspector
    from service.predictor import Predictor
    from service.runtime import OverloadedError, resolve_thresholds
    from service.settings import get_settings
    from service.uploads import (
        Limits,
        Options,
        UploadError,
        UploadMiddleware,
        collect_images,
        form_from_scope,
        is_zip,
        parse_options,
    )

# Under "bentoml" so the lines reach BentoML's server log handlers.
logger = logging.getLogger("bentoml.manylabel")

PREDICT_ROUTES = ("/predict", "/predict_bundle")


# --- documentation of the forms and answers (OpenAPI, BentoML client) ------------------------------


class PredictForm(BaseModel):
    images: list[Path] = Field(default_factory=list, description="image files, or .zip files of images")
    model: Literal["best", "last"] = Field("best", description="which exported model scores the images")
    threshold: float | None = Field(None, ge=0, le=1, description="one threshold for every label")
    thresholds: dict[str, float] | None = Field(
        None, description='JSON object label -> threshold, e.g. {"cat": 0.4}; other labels keep theirs'
    )


class BundleForm(PredictForm):
    format: Literal["zip", "json", "csv"] = Field("zip", description="bundle format")


class ImageAnswer(BaseModel):
    filename: str
    scores: dict[str, float]
    predicted: list[str]
    above: dict[str, bool]
    thresholds: dict[str, float]


class PredictAnswer(BaseModel):
    model: str
    version: str
    which: Literal["best", "last"]
    labels: list[str]
    count: int
    images: list[ImageAnswer]


# --- metrics ----------------------------------------------------------------------------------------


@functools.cache
def _batch_histogram() -> Any:
    # Created on first use, inside the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after import.
    import prometheus_client

    return prometheus_client.Histogram(
        "manylabel_batch_size",
        "Images per onnxruntime call (adaptive batching across concurrent requests)",
        ["model"],
        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256),
    )


@functools.cache
def _inference_histogram() -> Any:
    import prometheus_client

    return prometheus_client.Histogram(
        "manylabel_inference_seconds", "Duration of one onnxruntime call", ["model"]
    )


def _observe_batch(which: str, size: int, seconds: float) -> None:
    _batch_histogram().labels(model=which).observe(size)
    _inference_histogram().labels(model=which).observe(seconds)


# --- GET routes -------------------------------------------------------------------------------------


async def model_info(_: Request) -> Response:
    service: ManyLabel = bentoml.get_current_service()
    return JSONResponse(service.summary)


info_app = Starlette(routes=[Route("/model", model_info, methods=["GET"])])


# --- the service ------------------------------------------------------------------------------------


def _limits() -> Limits:
    s = get_settings()
    return Limits(max_files=s.max_files, max_request_bytes=s.max_request_bytes, max_zip_bytes=s.max_zip_bytes)


@bentoml.asgi_app(info_app, path="/")
@bentoml.asgi_app(inspect_app, path="/")  # inspect API and the /ui page; both apps match only their routes
@bentoml.service(
    name="manylabel",
    workers=1,  # one process: decode and inference threads share the model; scale out with replicas
    traffic={"timeout": 600},
    # Per-request access-log lines and tracing spans cost ~0.5 ms of event-loop time per image.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": list(PREDICT_ROUTES)},
)
class ManyLabel:
    """Multi-label image classification with a manylabel model from the BentoML model store."""

    def __init__(self) -> None:
        settings = get_settings()
        _batch_histogram(), _inference_histogram()
        # Loads best and last, verifies the manifest and sha256s, warms both sessions up.
        self.predictor = Predictor.load(settings=settings, on_batch=_observe_batch)
        self.limits = _limits()
        self.summary = self.predictor.summary()
        stored = self.predictor.stored
        self.inspector = load_inspector(stored)  # None for a model stored without records.npz
        # custom_thresholds.json (POST /thresholds, `manylabel thresholds`) is /predict's default.
        self.custom = self.inspector.custom if self.inspector else ThresholdFile(stored.path, stored.manifest)
        # Start-up objects (BentoML, onnxruntime, pydantic) live forever: keep them out of GC scans.
        gc.collect()
        gc.freeze()
        self._ready = True
        provider = self.predictor.runtime.provider
        logger.info(
            "manylabel serving %s on %s%s",
            self.predictor.stored.tag,
            provider.active,
            f" ({provider.note})" if provider.note else "",
        )

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.predictor.close()

    @bentoml.api(route="/predict", input_spec=PredictForm, output_spec=PredictAnswer)
    async def predict(self, ctx: bentoml.Context, **_documented: Any) -> Response:
        """Scores, predicted labels and thresholds for each uploaded image."""
        return await self._answer(ctx, formats=())

    @bentoml.api(route="/predict_bundle", input_spec=BundleForm, output_spec=PredictAnswer)
    async def predict_bundle(self, ctx: bentoml.Context, **_documented: Any) -> Response:
        """The predictions as a file: zip (images in a folder per label), json or csv."""
        return await self._answer(ctx, formats=FORMATS)

    async def _answer(self, ctx: bentoml.Context, *, formats: tuple[str, ...]) -> Response:
        try:
            form = form_from_scope(ctx.request.scope)
            options = parse_options(form.fields, formats=formats)
            thresholds = self._thresholds(options)
            if any(is_zip(part) for part in form.files):  # unzipping is CPU work: off the loop
                files = await asyncio.to_thread(collect_images, form.files, self.limits)
            else:
                files = collect_images(form.files, self.limits)
            result = await self.predictor.predict_async(files, which=options.which, thresholds=thresholds)
        except UploadError as exc:
            return _error(ctx, exc.status, exc.to_dict())
        except OverloadedError as exc:
            ctx.response.metadata["Retry-After"] = "1"
            return _error(ctx, 503, {"error": str(exc)})
        answer = result.to_dict()
        if options.format is None:
            return Response(json.dumps(answer).encode(), media_type="application/json")
        images = [f.data for f in files]
        bundle = await asyncio.to_thread(make_bundle, options.format, answer, images)
        return Response(
            bundle.data,
            media_type=bundle.media_type,
            headers={"Content-Disposition": f'attachment; filename="{bundle.filename}"'},
        )

    def _thresholds(self, options: Options) -> list[float]:
        try:
            base = self.custom.effective(options.which)  # re-reads the file only when it changed
            return resolve_thresholds(
                self.predictor.labels, base, threshold=options.threshold, overrides=options.thresholds
            )
        except ThresholdError as exc:
            field = "thresholds" if str(exc).startswith("thresholds") else "threshold"
            raise UploadError(str(exc), field=field) from exc


def _error(ctx: bentoml.Context, status: int, body: dict[str, Any]) -> Response:
    # BentoML copies ctx.response.status_code onto whatever the API returns.
    ctx.response.status_code = status
    return JSONResponse(body, status_code=status)


ManyLabel.add_asgi_middleware(UploadMiddleware, paths=PREDICT_ROUTES, limits=_limits)
