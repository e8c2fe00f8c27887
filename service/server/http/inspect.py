"""The inspect API and the web page, as a FastAPI app the BentoML service mounts at "/".

GET  /stats /pr_curve /predictions /diff /pairs /mislabelled   `Inspector.<route>(**query.arguments())`
     over the route's query model (`service.inspect.queries.ROUTES`)
GET  /image/{split}/{name}    a train/validation thumbnail (JPEG), looked up by image name
GET  /thresholds              the persisted custom thresholds and those in force
POST /thresholds              change them: {"which": best|last|both, one of "set" | "all" | "reset"}
GET  /ui, /ui/{file}          the page (`service/server/ui/`: plain HTML, JS and CSS, no build step)

FastAPI because BentoML 1.4.39 merges only a mounted FastAPI app's OpenAPI into /docs. Every route
takes ``model`` (NAME or NAME:VERSION; 404 unless it is the served one). Handlers run the numpy work
of the service's `Inspector` in a thread, so a big request never stalls `/predict`. Every refusal is
`RequestError.to_dict()` ``{"error", "field"}`` with its 4xx status, never FastAPI's 422 ``{"detail"}``.

POST /thresholds changes what `/predict` uses by default, so `service.server.http.guard` decides who
may: with ``MANYLABEL_API_TOKEN`` set, ``Authorization: Bearer <token>`` (401 otherwise); without it,
loopback clients naming a loopback Host (403 otherwise: no writes from the network or through DNS
rebinding). It also requires a JSON content type, which a cross-site HTML form cannot send without
the browser asking the server first, and reads at most `MAX_BODY_BYTES`: so it reads its body
itself, not through a body model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import bentoml
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from service.errors import ManifestError, RequestError
from service.inspect.inspector import Inspector
from service.inspect.queries import ROUTES, InspectQuery, ThresholdChange
from service.server.http.guard import Unauthorized, check_writer, read_json

logger = logging.getLogger("bentoml.manylabel")

MAX_BODY_BYTES = 64 << 10  # a thresholds change is a few hundred bytes
MAX_NAME_CHARS = 1024
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
# The page loads nothing from elsewhere; blob: for the previews of images picked for upload.
UI_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
THUMBNAIL_MAX_AGE_S = 24 * 3600


class ErrorBody(BaseModel):
    """Every refusal: `service.errors.RequestError.to_dict()`."""

    error: str
    field: str | None
    file: str | None = None


def load_inspector(stored: Any) -> Inspector | None:
    """The inspector of a `service.store.StoredModel`; None (logged) for a model stored without records,
    which still serves `/predict` (only the inspect routes and the page's statistics answer 404)."""
    try:
        return Inspector.from_stored(stored)
    except ManifestError as exc:
        logger.warning("inspect views are off for %s: %s", stored.tag, exc)
        return None


# --- refusals: one body ----------------------------------------------------------------------------


def _refusal(exc: RequestError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def _request_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _refusal(exc)


# pydantic's wording of these, replaced by the core's wording of the same refusals (as the CLI says them).
_MESSAGES = {
    "extra_forbidden": "unknown parameter; expected {expected}",
    "int_parsing": "{given} is not an integer",
    "float_parsing": "{given} is not a number; give a number in [0, 1]",
}


def _parameters(request: Request) -> list[str]:
    """The query parameters of the route `request` matched: its query model's fields."""
    route = request.scope.get("route")
    params = route.dependant.query_params if isinstance(route, APIRoute) else []
    return sorted(name for param in params for name in param.field_info.annotation.model_fields)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """The first problem of a query string, as a 400 naming its parameter."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"][1:]) or str(first["loc"][0])  # less "query"
    given = repr(str(first.get("input"))[:100])
    template = _MESSAGES.get(first["type"])
    if template is not None:
        message = template.format(given=given, expected=_parameters(request))
    elif first.get("input") is None or isinstance(first["input"], dict | list) or given in first["msg"]:
        message = first["msg"]
    else:
        message = f"{first['msg']} (got {given})"
    return _refusal(RequestError(f"{field}: {message}", field=field))


async def _http_error(_: Request, exc: Exception) -> Response:
    # 404 / 405 raised by the router itself (e.g. DELETE /stats), as JSON like every other refusal.
    assert isinstance(exc, HTTPException)
    return _refusal(RequestError(str(exc.detail), status=exc.status_code), exc.headers)


def _guarded(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """A bug in a handler is logged and answered 500 JSON, never a traceback or a server-level error."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except RequestError:
            raise  # answered by `_request_error`
        except Exception:
            logger.exception("inspect route %s failed", handler.__name__)
            return _refusal(RequestError("internal error; the server log has the details", status=500))

    return wrapper


def _given_once(request: Request) -> None:
    """A parameter given twice is refused rather than one of its values silently picked."""
    twice = [key for key, n in Counter(k for k, _ in request.query_params.multi_items()).items() if n > 1]
    if twice:
        raise RequestError(f"{twice[0]}: given more than once; give it once", field=twice[0])


inspect_app = FastAPI(
    title="manylabel inspect",
    docs_url=None,  # BentoML serves /docs and /docs.json for the whole service
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(_given_once)],
    responses={"4XX": {"model": ErrorBody, "description": 'refused: {"error", "field"} names the cause'}},
    exception_handlers={
        RequestError: _request_error,
        RequestValidationError: _validation_error,
        HTTPException: _http_error,
    },
)


async def _inspector(model: str | None) -> Inspector:
    """The inspect views of the model a request names (the default one when none), opened if needed."""
    served = await bentoml.get_current_service().models.find(model)
    if served.inspector is None:
        raise RequestError(
            "this model was stored without inspection records (records.npz): retrain it with a current "
            "manylabel to get statistics, curves and predictions",
            status=404,
        )
    return served.inspector


def _query_route(route: str, model: type[InspectQuery]) -> None:
    async def answer(query: InspectQuery) -> Response:
        inspector = await _inspector(query.model)
        return JSONResponse(await asyncio.to_thread(getattr(inspector, route), **query.arguments()))

    answer.__annotations__["query"] = Annotated[model, Query()]  # this route's parameters, on /docs
    inspect_app.get(f"/{route}", name=route, description=model.__doc__)(_guarded(answer))


for _route, _model in ROUTES.items():
    _query_route(_route, _model)


@inspect_app.get("/image/{split}/{name:path}", response_class=Response)
@_guarded
async def image(request: Request, split: str, name: str, query: Annotated[InspectQuery, Query()]) -> Response:
    """A train or validation image's stored thumbnail (JPEG), by its name."""
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise RequestError("name: not an image name (control characters or too long)", field="name")
    inspector = await _inspector(query.model)
    # A name's thumbnail never changes within one model version, so the model tag is part of the ETag.
    etag = '"' + hashlib.sha256(f"{inspector.tag}\0{split}\0{name}".encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE_S}", "ETag": etag}
    data = await asyncio.to_thread(inspector.image, split, name)  # 404 for an unknown name
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers={**headers, "X-Content-Type-Options": "nosniff"})


# --- custom thresholds ------------------------------------------------------------------------------




@inspect_app.get("/thresholds")
@_guarded
async def saved_thresholds(query: Annotated[InspectQuery, Query()]) -> Response:
    """The saved custom thresholds and the thresholds in force, for best and last."""
    inspector = await _inspector(query.model)
    return JSONResponse(await asyncio.to_thread(inspector.custom_state))


_CHANGE_BODY = {"content": {"application/json": {"schema": ThresholdChange.model_json_schema()}}}


@inspect_app.post("/thresholds", openapi_extra={"requestBody": {"required": True, **_CHANGE_BODY}})
@_guarded
async def change_thresholds(request: Request, query: Annotated[InspectQuery, Query()]) -> Response:
    """Save custom thresholds (the default of /predict and of the views), or reset them: with
    ``Authorization: Bearer <token>`` when the server sets MANYLABEL_API_TOKEN, else from this machine
    only (`service.server.http.guard`)."""
    inspector = await _inspector(query.model)
    try:
        check_writer(request)
    except Unauthorized as refused:
        return _refusal(refused, {"WWW-Authenticate": "Bearer"})
    body = await read_json(request, MAX_BODY_BYTES)
    state = await asyncio.to_thread(inspector.update_thresholds, body)
    logger.info("custom thresholds of %s changed: %s", inspector.tag, json.dumps(body)[:500])
    return JSONResponse(state)


# --- the page ---------------------------------------------------------------------------------------


class PageFiles(StaticFiles):
    """`StaticFiles` (which keeps requests inside the folder) with the page's headers, JSON 404s, and
    index.html at /ui and /ui/. JavaScript is text/javascript even where Python guesses otherwise."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path in ("", "."):  # the page itself, without StaticFiles' redirect to /ui/
            path = "index.html"
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            raise RequestError(f"no page file named {path[:100]!r}", field="file", status=404) from None
        response.headers.update(UI_HEADERS)
        if path.endswith(".js") and response.status_code == 200:  # whatever /etc/mime.types says
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


page_files = PageFiles(directory=UI_DIR, html=True, check_dir=False)


@inspect_app.get("/ui", include_in_schema=False)
async def page(request: Request) -> Response:
    return await page_files.get_response("index.html", request.scope)


inspect_app.mount("/ui", page_files, name="ui")
