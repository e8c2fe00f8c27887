"""The inspect API and the web page, as a Starlette app the BentoML service mounts at "/".

GET  /stats, /pr_curve, /predictions, /diff, /pairs, /mislabelled   `Inspector.query` (query string)
GET  /image/{split}/{name}    a train/validation thumbnail (JPEG), looked up by image name
GET  /thresholds              the persisted custom thresholds and those in force
POST /thresholds              change them: {"model": best|last|both, one of "set" | "all" | "reset"}
GET  /ui, /ui/{file}          the page (`service/ui/`: plain HTML, JS and CSS, no build step)

Handlers find the model's `Inspector` on the service instance (`ManyLabel.inspector`) and run the
numpy work in a thread, so a big statistics request never stalls `/predict` on the event loop.
Every refusal is 4xx JSON ``{"error": message, "field": name or null}``.

POST /thresholds changes what `/predict` uses by default, so it can be guarded: when the environment
variable ``MANYLABEL_API_TOKEN`` is set (read once, at the first request), it requires
``Authorization: Bearer <token>`` and answers 401 otherwise. It also requires a JSON content type,
which a cross-site HTML form cannot send without the browser asking the server first.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.custom_thresholds import CustomThresholdsError
from service.errors import ManifestError, ManylabelError, ThresholdError
from service.inspect import InspectError
from service.inspector import Inspector

logger = logging.getLogger("bentoml.manylabel")

ENDPOINTS = ("stats", "pr_curve", "predictions", "diff", "pairs", "mislabelled")
TOKEN_ENV = "MANYLABEL_API_TOKEN"
MAX_BODY_BYTES = 64 << 10  # a thresholds change is a few hundred bytes
MAX_NAME_CHARS = 1024
UI_DIR = Path(__file__).resolve().parent / "ui"
UI_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
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

Handler = Callable[[Request], Awaitable[Response]]


def load_inspector(stored: Any) -> Inspector | None:
    """The inspector of a `service.store.StoredModel`; None (logged) for a model stored without records.

    A model exported before records were stored still serves `/predict`; only the inspect routes and
    the page's statistics answer 404 for it.
    """
    try:
        return Inspector.from_stored(stored)
    except ManifestError as exc:
        logger.warning("inspect views are off for %s: %s", stored.tag, exc)
        return None


# --- plumbing ---------------------------------------------------------------------------------------


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _guarded(handler: Handler) -> Handler:
    """Turn the errors a request can cause into 4xx JSON; anything else is a bug, logged, 500 JSON."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except InspectError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        except CustomThresholdsError as exc:  # the stored file is damaged or the store is read-only
            return _error(409, str(exc), "custom_thresholds")
        except ThresholdError as exc:
            return _error(400, str(exc), "thresholds")
        except ManylabelError as exc:
            return _error(400, str(exc))
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal error; the server log has the details")

    return wrapper


def _inspector() -> Inspector:
    inspector = getattr(bentoml.get_current_service(), "inspector", None)
    if inspector is None:
        raise InspectError(
            "this model was stored without inspection records (records.npz): retrain it with a current "
            "manylabel to get statistics, curves and predictions",
            status=404,
        )
    return inspector


def _params(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise InspectError(f"{key}: given more than once; give it once", field=key)
        params[key] = value
    return params


# --- inspect queries --------------------------------------------------------------------------------


def _query_route(endpoint: str) -> Route:
    async def handler(request: Request) -> Response:
        inspector = _inspector()
        answer = await asyncio.to_thread(inspector.query, endpoint, _params(request))
        return JSONResponse(answer)

    handler.__name__ = f"inspect_{endpoint}"
    return Route(f"/{endpoint}", _guarded(handler), methods=["GET"])


async def image(request: Request) -> Response:
    split, name = request.path_params["split"], request.path_params["name"]
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise InspectError("name: not an image name (control characters or too long)", field="name")
    inspector = _inspector()
    # A name's thumbnail never changes within one model version, so the model tag is part of the ETag.
    etag = '"' + hashlib.sha256(f"{inspector.tag}\0{split}\0{name}".encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE_S}", "ETag": etag}
    data = await asyncio.to_thread(inspector.image, split, name)  # 404 for an unknown name
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers={**headers, "X-Content-Type-Options": "nosniff"})


# --- custom thresholds ------------------------------------------------------------------------------


@functools.cache
def _api_token() -> str:
    return os.environ.get(TOKEN_ENV, "").strip()


def _authorized(request: Request) -> bool:
    token = _api_token()
    if not token:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _json_body(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InspectError(
            f"body: send JSON with Content-Type: application/json (got {media_type or 'none'!r})",
            field="body",
            status=415,
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InspectError(f"body: larger than {MAX_BODY_BYTES} bytes", field="body", status=413)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InspectError(f"body: not valid JSON ({exc})", field="body") from None


async def thresholds(request: Request) -> Response:
    inspector = _inspector()
    if request.method == "GET":
        return JSONResponse(await asyncio.to_thread(inspector.custom_state))
    if not _authorized(request):
        return _error(
            401,
            f"changing thresholds needs 'Authorization: Bearer <token>' (the server's {TOKEN_ENV})",
            "authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = await _json_body(request)
    state = await asyncio.to_thread(inspector.update_thresholds, body)
    logger.info("custom thresholds of %s changed: %s", inspector.tag, json.dumps(body)[:500])
    return JSONResponse(state)


# --- the page ---------------------------------------------------------------------------------------


@functools.cache
def _ui_files() -> dict[str, Path]:
    """name -> file of the page's assets: a fixed list, so a request never turns into a path."""
    if not UI_DIR.is_dir():
        return {}
    return {p.name: p for p in UI_DIR.iterdir() if p.is_file() and p.suffix in UI_TYPES}


async def ui(request: Request) -> Response:
    name = request.path_params.get("file") or "index.html"
    path = _ui_files().get(name)
    if path is None:
        raise InspectError(f"no page file named {name[:100]!r}", field="file", status=404)
    data = await asyncio.to_thread(path.read_bytes)
    return Response(data, media_type=UI_TYPES[path.suffix], headers=UI_HEADERS)


async def _http_error(_: Request, exc: Exception) -> Response:
    # 404 / 405 raised by the router itself (e.g. DELETE /stats), as JSON like every other refusal.
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), headers=exc.headers)


inspect_routes = [
    *(_query_route(endpoint) for endpoint in ENDPOINTS),
    Route("/image/{split}/{name:path}", _guarded(image), methods=["GET"]),
    Route("/thresholds", _guarded(thresholds), methods=["GET", "POST"]),
    Route("/ui", _guarded(ui), methods=["GET"]),
    Route("/ui/{file:path}", _guarded(ui), methods=["GET"]),
]
inspect_app = Starlette(routes=inspect_routes, exception_handlers={HTTPException: _http_error})
