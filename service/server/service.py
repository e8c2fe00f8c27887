"""The manylabel BentoML service: `bentoml serve service.server.service:ManyLabel`.

Request path, kept thin because on a 2-core CPU every millisecond of Python is a millisecond not
spent decoding or inferring:
  `http.predict.PredictRoutes` answers POST /predict and /predict_bundle at the ASGI layer: it
  parses the multipart body in memory (BentoML's own parser answers 500 to bad bodies and loses
  file names), skipping BentoML's per-call dispatch -> `answer.options_from_form` validates the
  options -> `answer.answer`: images are decoded in a thread pool -> `batcher.Batcher` groups images
  of concurrent requests into onnxruntime calls on worker threads -> the answer is built from plain
  numbers. A request of one small JPEG, alone in the worker, is decoded and scored on the event loop
  (`Predictor.predict_async`): no thread hand-over.
The `@bentoml.api` methods declare the same routes for the OpenAPI schema and BentoML's clients and
serve in-process callers (`ManyLabel().predict(images=[path])`) through the same `answer.answer`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

with bentoml.importing():
    from service.errors import RequestError
    from service.server.answer import BundleOptions, PredictOptions, answer, options_from_form
    from service.server.http import coalesce
    from service.server.http.budget import ByteBudget, Reservation
    from service.server.http.inspect import inspect_app, load_inspector
    from service.server.http.linger import Linger
    from service.server.http.predict import PredictRoutes, Reply
    from service.server.http.uploads import Form, Limits, collect_images, is_zip, read_local_images
    from service.server.models import Models, describe_stored
    from service.server.request_metrics import install as install_request_metrics
    from service.server.settings import get_settings
    from service.server.timeouts import install as install_timeout_fix

# Under "bentoml" so the lines reach BentoML's server log handlers.
logger = logging.getLogger("bentoml.manylabel")

PREDICT_ROUTES = ("/predict", "/predict_bundle")


# --- documentation of the forms and answers (OpenAPI, BentoML client) ------------------------------


IMAGES_DOC = "image files, or .zip files of images"


class PredictForm(PredictOptions):
    images: list[Path] = Field(default_factory=list, description=IMAGES_DOC)


class BundleForm(BundleOptions):
    images: list[Path] = Field(default_factory=list, description=IMAGES_DOC)


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
    precision: Literal["fp32", "int8"]
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


@functools.cache
def _batch_metrics(which: str) -> tuple[Any, Any]:
    # The labelled children, looked up once: `labels()` took ~10 us per call on the inference thread.
    return _batch_histogram().labels(model=which), _inference_histogram().labels(model=which)


def _observe_batch(which: str, size: int, seconds: float) -> None:
    sizes, durations = _batch_metrics(which)
    sizes.observe(size)
    durations.observe(seconds)


# --- GET routes -------------------------------------------------------------------------------------


async def model_info(request: Request) -> Response:
    """GET /model[?model=NAME[:VERSION]]: one model's labels, thresholds, statistics and serving."""
    service: ManyLabel = bentoml.get_current_service()
    try:
        served = await service.models.find(request.query_params.get("model"))
    except RequestError as exc:
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    return JSONResponse(served.summary)


async def models_list(_: Request) -> Response:
    """GET /models: every model in the store, newest first, and whether it is open."""
    service: ManyLabel = bentoml.get_current_service()
    rows = await asyncio.to_thread(describe_stored, service.models.loaded())
    return JSONResponse({"default": service.models.default_tag, "models": rows})


info_app = Starlette(
    routes=[Route("/model", model_info, methods=["GET"]), Route("/models", models_list, methods=["GET"])]
)


# --- the service ------------------------------------------------------------------------------------


@functools.cache
def _limits() -> Limits:
    """The request limits, with the one in-flight byte budget this worker's requests share."""
    s = get_settings()
    return Limits(
        max_files=s.max_files,
        max_request_bytes=s.max_request_bytes,
        max_zip_bytes=s.max_zip_bytes,
        inflight=ByteBudget(s.max_inflight_bytes),
        body_timeout_s=s.body_timeout_s,
    )


@bentoml.asgi_app(info_app, path="/")
@bentoml.asgi_app(inspect_app, path="/")  # inspect API and the /ui page; both apps match only their routes
@bentoml.service(
    name="manylabel",
    workers=1,  # one process: decode and inference threads share the model; scale out with replicas
    # Requests past max_concurrency are answered 503 at once instead of queueing without bound; 64 is
    # twice the concurrency at which one 2-core replica already reaches its best throughput
    # (benchmarks/README.md). Override: BENTOML_CONFIG_OPTIONS="services.manylabel.traffic.max_concurrency=N".
    traffic={"timeout": 600, "max_concurrency": 64},
    # Per-request access-log lines and tracing spans cost ~0.5 ms of event-loop time per image.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": list(PREDICT_ROUTES)},
)
class ManyLabel:
    """Multi-label image classification with a manylabel model from the BentoML model store."""

    def __init__(self) -> None:
        settings = get_settings()
        _batch_histogram(), _inference_histogram()
        self.limits = _limits()
        # Every stored model can be asked for; the default one is opened (verified, warmed up) now.
        self.models = Models(settings, on_batch=_observe_batch, open_inspector=load_inspector)
        self.models.open_default()
        # Start-up objects (BentoML, onnxruntime, pydantic) live forever: keep them out of GC scans.
        gc.collect()
        gc.freeze()
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.models.close()

    # Over HTTP, PredictRoutes answers these two routes (see the module docstring); these bodies
    # serve the OpenAPI page's schema and in-process callers, through the same `answer`.
    @bentoml.api(route="/predict", input_spec=PredictForm, output_spec=PredictAnswer)
    async def predict(self, images: list[Path], **options: Any) -> Response:
        """Scores, predicted labels and thresholds for each uploaded image."""
        return await self._local(images, lambda: PredictOptions.checked(options))

    @bentoml.api(route="/predict_bundle", input_spec=BundleForm, output_spec=PredictAnswer)
    async def predict_bundle(self, images: list[Path], **options: Any) -> Response:
        """The predictions as a file: zip (images in a folder per label), json or csv."""
        return await self._local(images, lambda: BundleOptions.checked(options))

    async def _local(self, images: list[Path], options: Callable[[], PredictOptions]) -> Response:
        try:
            files = await asyncio.to_thread(read_local_images, images, self.limits)
            chosen = options()
            async with self.models.use(chosen.model) as served:
                reply = await answer(served.predictor, chosen, files)
        except RequestError as exc:
            reply = Reply.error(exc)
        return Response(reply.read(), reply.status, dict(reply.headers), reply.media_type)

    async def answer_form(self, form: Form, route: str, reservation: Reservation) -> Reply:
        """One HTTP predict request, from its parsed multipart form."""
        options = options_from_form(form.fields, bundle=route == "/predict_bundle")
        if any(is_zip(part) for part in form.files):  # unzipping is CPU work: off the loop
            files = await asyncio.to_thread(collect_images, form.files, self.limits, reservation)
        else:
            files = collect_images(form.files, self.limits, reservation)
        async with self.models.use(options.model) as served:
            return await answer(served.predictor, options, files, alone=reservation.alone)


@functools.cache
def _linger() -> Linger:
    """How long this worker's event loop waits, awake, for its only client's next request."""
    return Linger(get_settings().linger_ms / 1000)


_current_service = bentoml.get_current_service  # looked up once: bentoml's lazy __getattr__ costs 20 us


async def _answer_http(form: Form, route: str, reservation: Reservation) -> Reply:
    service: ManyLabel = _current_service()
    return await service.answer_form(form, route, reservation)


ManyLabel.add_asgi_middleware(
    PredictRoutes, paths=PREDICT_ROUTES, limits=_limits, handler=_answer_http, linger=_linger
)
install_timeout_fix()  # BentoML's request timers: cancelled when the request ends
coalesce.install()  # an answer's head and body in one socket write
install_request_metrics()  # BentoML's request metrics: the same series, counted after the answer
