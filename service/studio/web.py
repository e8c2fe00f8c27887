"""What every studio route shares: the write rule, uploads read within the service's limits, JSON
bodies, and the one error body.

Writes (datasets, jobs) follow `service.server.http.guard.check_writer`: the API token when the server
has one, else loopback clients naming a loopback Host. On top, a browser's cross-site write is
refused by its `Origin` / `Sec-Fetch-Site` headers: a multipart form is a request any web page may
send to 127.0.0.1 without asking first (JSON bodies need `Content-Type: application/json`, which a
page elsewhere cannot send without a CORS preflight that this server never grants).

Uploads are parsed by the predict routes' own reader (`service.server.http.predict.read_form`,
`uploads.collect_images`): the same per-request limits (`MANYLABEL_MAX_FILES`,
`MANYLABEL_MAX_REQUEST_BYTES`, `MANYLABEL_MAX_ZIP_BYTES`) and the same in-flight byte budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import bentoml
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from service.errors import RequestError
from service.server.http.budget import Reservation
from service.server.http.guard import read_json
from service.server.http.predict import read_form
from service.server.http.uploads import IMAGES_FIELD, InputFile, Limits, Part, collect_images

logger = logging.getLogger("bentoml.manylabel")

LABELS_FIELD = "labels"
MAX_JSON_BYTES = 1 << 20  # a job request naming 10,000 validation images fits


# --- refusals: one body -------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every refusal: `service.errors.RequestError.to_dict()` (listed on /docs)."""

    error: str
    field: str | None
    file: str | None = None


def refusal(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def on_request_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return refusal(exc)


async def on_validation_error(_: Request, exc: Exception) -> Response:
    """A path or query parameter that does not parse, as a 400 naming it."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
    return refusal(
        RequestError(f"{field}: {first['msg']} (got {str(first.get('input'))[:100]!r})", field=field)
    )


async def on_http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return refusal(RequestError(str(exc.detail), status=exc.status_code))


async def on_bug(request: Request, exc: Exception) -> Response:
    logger.error("studio %s %s failed", request.method, request.url.path, exc_info=exc)
    return refusal(RequestError("internal error; the server log has the details", status=500))


# --- writes -------------------------------------------------------------------------------------


async def json_body(request: Request) -> Any:
    return await read_json(request, MAX_JSON_BYTES)


# --- uploads ------------------------------------------------------------------------------------


@dataclass
class Upload:
    fields: dict[str, str]
    images: list[Part]  # file parts of `images`, not yet unzipped
    labels: tuple[str, bytes] | None  # (file name, CSV bytes)
    limits: Limits
    reservation: Reservation

    def collect(self) -> list[InputFile]:
        """The images, zips expanded (call it in a thread: unzipping is CPU work)."""
        return collect_images(self.images, self.limits, self.reservation) if self.images else []


@contextlib.asynccontextmanager
async def upload(request: Request, *, fields: tuple[str, ...] = ()) -> AsyncIterator[Upload]:
    """The multipart form of a dataset upload; its bytes stay reserved in the budget until the end."""
    limits: Limits = bentoml.get_current_service().limits
    reservation = Reservation(limits.inflight)
    try:
        form = await read_form(request.scope, request.receive, limits, reservation)
        if form is None:
            raise RequestError("the client closed the connection before the upload ended")
        for key, values in form.fields.items():
            if key not in (*fields, LABELS_FIELD) or len(values) > 1:
                expected = ", ".join(repr(f) for f in (*fields, IMAGES_FIELD, LABELS_FIELD))
                raise RequestError(
                    f"{key}: not expected, or given twice; the form takes {expected}", field=key
                )
        labels = _labels(form.fields.get(LABELS_FIELD), [p for p in form.files if p.field == LABELS_FIELD])
        images = [p for p in form.files if p.field != LABELS_FIELD]
        values = {key: value[0] for key, value in form.fields.items() if key != LABELS_FIELD}
        yield Upload(values, images, labels, limits, reservation)
    finally:
        reservation.close()


def _labels(text: list[str] | None, parts: list[Part]) -> tuple[str, bytes] | None:
    given = len(parts) + len(text or [])
    if given > 1:
        raise RequestError("labels: send one labels CSV per request", field=LABELS_FIELD)
    if parts:
        return (parts[0].filename or "labels.csv", bytes(parts[0].data))
    if text:
        return ("labels.csv", text[0].encode("utf-8"))
    return None


async def in_thread(fn: Any, *args: Any) -> Any:
    """Disk, hashing and decoding work off the event loop, so `/predict` keeps answering."""
    return await asyncio.to_thread(fn, *args)
