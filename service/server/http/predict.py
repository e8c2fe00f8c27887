"""POST /predict and /predict_bundle, answered at the ASGI layer.

The routes are declared as BentoML APIs in `service.py` (the OpenAPI schema, BentoML's clients,
in-process callers), but over HTTP this middleware answers them itself, before BentoML's router:
  * BentoML 1.4.39's multipart parsing answers 500 to malformed bodies and loses file names, so the
    body is parsed here, in memory and within limits (`multipart.MultipartReader`), 4xx when bad;
  * BentoML's per-call API dispatch (signature binding, validating the input model, response
    headers through its dependency injection, background clean-up) cost 0.5-0.8 ms per request on
    the 2-core benchmark machine: 6-8 % of a 256-px image's whole service time (benchmarks/README.md).
BentoML's server middlewares outside this one (request metrics, timeout, CORS, tracing) still apply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from service.bundles import BundleFile
from service.errors import RequestError
from service.server.http.budget import Reservation
from service.server.http.clients import RecentClients
from service.server.http.linger import Linger
from service.server.http.multipart import MultipartReader
from service.server.http.uploads import Form, Limits, decode_text, too_large

logger = logging.getLogger("bentoml.manylabel")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as plain data, so the same handler serves ASGI and in-process callers.

    A bundle comes as `stream` (a spooled file: in memory up to a few MB, on disk beyond) instead of
    `body`, sent in chunks and closed once sent; `read()` gives the bytes to in-process callers.
    """

    status: int
    body: bytes
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    stream: BundleFile | None = None

    @property
    def size(self) -> int:
        return self.stream.size if self.stream is not None else len(self.body)

    def read(self) -> bytes:
        """The whole body (closes the stream)."""
        if self.stream is None:
            return self.body
        return b"".join(self.stream.chunks())

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    @classmethod
    def json(cls, status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """orjson: 1.6 us for a one-image answer where json.dumps took 26 (~0.1 ms in the server)."""
        return cls(status, orjson.dumps(body), "application/json", headers)

    @classmethod
    def error(cls, exc: RequestError) -> Reply:
        """The one error body; Retry-After when the refusal is temporary."""
        headers = (("Retry-After", str(exc.retry_after)),) if exc.retry_after is not None else ()
        return cls.json(exc.status, exc.to_dict(), headers)


# (form, path, the request's byte reservation) -> reply; raises RequestError for a request to refuse.
Handler = Callable[[Form, str, Reservation], Awaitable[Reply]]


class PredictRoutes:
    """ASGI middleware answering POSTs to `paths` with `handler`; everything else passes through.

    `limits`, `handler` and `linger` are looked up per request (they live in the service instance,
    which BentoML creates after the middleware). After answering a request that was alone
    (`Reservation.alone`), the event loop lingers (`linger.Linger`) for the client's next one.
    """

    def __init__(
        self,
        app: Callable,
        *,
        paths: Collection[str],
        limits: Callable[[], Limits],
        handler: Handler,
        linger: Callable[[], Linger | None] = lambda: None,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.limits = limits
        self.clients = RecentClients()
        self.handler = handler
        self.linger = linger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        limits = self.limits()
        reservation = Reservation(limits.inflight, sole_client=self.clients.sole(scope.get("client")))
        try:
            form = await read_form(scope, receive, limits, reservation)
            if form is None:  # the client went away
                return
            reply = await self.handler(form, scope["path"], reservation)
        except RequestError as exc:
            reply = Reply.error(exc)
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            reply = Reply.json(
                500, {"error": "an unexpected error occurred; the server log has the details", "field": None}
            )
        finally:
            alone = reservation.alone()
            reservation.close()
        await send_reply(send, reply)
        if alone and (linger := self.linger()) is not None and limits.inflight is not None:
            budget = limits.inflight
            linger.start(lambda: budget.holders > 0)  # until the next request takes a reservation


async def read_form(
    scope: Scope, receive: Receive, limits: Limits, reservation: Reservation | None = None
) -> Form | None:
    """The request's multipart form, within `limits`; None when the client disconnects first.

    Every byte kept is taken from `reservation` (the worker's budget), a declared Content-Length up
    front; a client silent for `limits.body_timeout_s` mid-body is answered 408.
    """
    headers = dict(scope["headers"])
    length = headers.get(b"content-length", b"")
    declared = int(length) if length.isdigit() else None
    if declared is not None and declared > limits.max_request_bytes:
        raise too_large(declared, limits.max_request_bytes)
    reader = MultipartReader(decode_text(headers.get(b"content-type", b"")), limits, declared=declared)
    if reservation is not None and declared is not None:
        reservation.take(declared)  # the whole body, before any of it is read
    else:
        reader.reservation = reservation
    loop = asyncio.get_running_loop()
    try:
        # One timer moved per message: asyncio.wait_for made a task per message (20 us and a loop turn).
        async with asyncio.timeout(None) as stall:
            while True:
                stall.reschedule(loop.time() + limits.body_timeout_s)
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                reader.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestError(
            f"the request body stalled for {limits.body_timeout_s:g} s; send it at once", status=408
        ) from None
    return reader.finish()


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.media_type.encode()),
        (b"content-length", str(reply.size).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers),
    ]
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if reply.stream is None:
            await send({"type": "http.response.body", "body": reply.body})
            return
        chunks = reply.stream.chunks()
        while chunk := await asyncio.to_thread(next, chunks, b""):  # file reads off the event loop
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        reply.close()
