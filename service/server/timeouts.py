"""BentoML 1.4.39's request timeout, kept in the request's own task and with its timer cancelled.

`bentoml/_internal/server/http/traffic.py` `TimeoutMiddleware.__call__`, for every request:
  * arms `loop.call_later(traffic.timeout, ...)` and never cancels it: a TimerHandle, a future and a
    context copy (~0.7 KB) per request live `traffic.timeout` seconds (600 here). At 129 requests/s
    that is ~55 MiB held for nothing and a replica whose memory climbs for ten minutes
    (benchmarks/README.md, "Soak": +6.9 % after warm-up as is, +1.7 % with the timer cancelled);
  * runs the rest of the app in a task of its own and waits on a future set by the first `send`:
    a task, a future and two more event-loop turns per request, and an app that raises before it
    answers leaves the request waiting for the timeout (then a 504) instead of failing at once.
`install()` replaces the method with `asyncio.timeout` around the app in the request's task, moved
to never once the answer starts, as BentoML's stops counting at the first message sent: a request
still unanswered after `timeout` seconds gets the same 504, an error reaches the server's 500 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def install() -> None:
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    if getattr(traffic.TimeoutMiddleware.__call__, "_manylabel_fixed", False):
        return

    async def __call__(self: Any, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        deadline = asyncio.timeout(self.timeout)
        answering = False

        async def _send(message: dict) -> None:
            nonlocal answering
            if not answering:
                answering = True
                deadline.reschedule(None)  # the answer has started: no timeout from here on
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own TimeoutError
            body = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(body, status_code=504)(scope, receive, send)

    __call__._manylabel_fixed = True  # type: ignore[attr-defined]
    traffic.TimeoutMiddleware.__call__ = __call__
