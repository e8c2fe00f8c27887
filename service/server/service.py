"""The manylabel BentoML service: `bentoml serve service.service:ManyLabel`.

Request path, kept thin because on a 2-core CPU every millisecond of Python is a millisecond not
spent decoding or inferring:
  `predict_routes.PredictRoutes` answers POST /predict and /predict_bundle at the ASGI layer: it
  parses the multipart body in memory (BentoML's own parser answers 500 to bad bodies and loses
  file names) and calls `ManyLabel.answer`, skipping BentoML's per-call dispatch -> the options are
  validated -> images are decoded in a thread pool -> `runtime.Batcher` groups images of
  concurrent requests into onnxruntime calls on worker threads -> the answer is built from plain
  numbers.
The `@bentoml.api` methods declare the same routes for the OpenAPI schema and BentoML's clients and
serve in-process callers (`ManyLabel().predict(images=[path])`) through the same `answer`.
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
    from service.predict_routes import PredictRoutes, Reply
    from service.predictor import Predictor
    from service.runtime import OverloadedError, resolve_thresholds
    from service.settings import get_settings
    from service.uploads import (
        Form,
        Limits,
        Options,
        UploadError,
        collect_images,
        form_from_values,
        is_zip,
        parse_options,
    )

# Under "bentoml" so the lines reach BentoML's server log handlers.
logger = logging.getLogger("bentoml.manylabel")

PREDICT_ROUTES = {"/predict": (), "/predict_bundle": FORMATS}  # route -> the bundle formats it offers


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

    # Over HTTP, PredictRoutes answers these two routes (see the module docstring); these bodies
    # serve in-process callers with the same code and the same answers.
    @bentoml.api(route="/predict", input_spec=PredictForm, output_spec=PredictAnswer)
    async def predict(self, **form: Any) -> Response:
        """Scores, predicted labels and thresholds for each uploaded image."""
        return await self._local(form, "/predict")

    @bentoml.api(route="/predict_bundle", input_spec=BundleForm, output_spec=PredictAnswer)
    async def predict_bundle(self, **form: Any) -> Response:
        """The predictions as a file: zip (images in a folder per label), json or csv."""
        return await self._local(form, "/predict_bundle")

    async def _local(self, values: dict[str, Any], route: str) -> Response:
        try:
            reply = await self.answer(form_from_values(values), route)
        except UploadError as exc:
            reply = Reply.json(exc.status, exc.to_dict())
        return Response(reply.body, reply.status, dict(reply.headers), reply.media_type)

    async def answer(self, form: Form, route: str) -> Reply:
        """One predict request, from its parsed form. Raises UploadError for a request to refuse."""
        options = parse_options(form.fields, formats=PREDICT_ROUTES[route])
        thresholds = self._thresholds(options)
        if any(is_zip(part) for part in form.files):  # unzipping is CPU work: off the loop
            files = await asyncio.to_thread(collect_images, form.files, self.limits)
        else:
            files = collect_images(form.files, self.limits)
        try:
            result = await self.predictor.predict_async(files, which=options.which, thresholds=thresholds)
        except OverloadedError as exc:
            return Reply.json(503, {"error": str(exc)}, headers=(("Retry-After", "1"),))
        answer = result.to_dict()
        if options.format is None:
            return Reply(200, json.dumps(answer).encode())
        bundle = await asyncio.to_thread(make_bundle, options.format, answer, [f.data for f in files])
        disposition = f'attachment; filename="{bundle.filename}"'
        return Reply(200, bundle.data, bundle.media_type, (("Content-Disposition", disposition),))

    def _thresholds(self, options: Options) -> list[float]:
        try:
            base = self.custom.effective(options.which)  # re-reads the file only when it changed
            return resolve_thresholds(
                self.predictor.labels, base, threshold=options.threshold, overrides=options.thresholds
            )
        except ThresholdError as exc:
            field = "thresholds" if str(exc).startswith("thresholds") else "threshold"
            raise UploadError(str(exc), field=field) from exc


async def _answer_http(form: Form, route: str) -> Reply:
    service: ManyLabel = bentoml.get_current_service()
    return await service.answer(form, route)


ManyLabel.add_asgi_middleware(PredictRoutes, paths=PREDICT_ROUTES, limits=_limits, handler=_answer_http)
