"""A fix for BentoML 1.4.39's request timeout: it never cancels its per-request timer.

`bentoml/_internal/server/http/traffic.py` `TimeoutMiddleware.__call__` arms
`loop.call_later(traffic.timeout, ...)` for every request and leaves it pending after the answer:
a TimerHandle, a future and a context copy (~0.7 KB) per request live `traffic.timeout` seconds
(600 here). At 129 requests/s that is ~55 MiB held for nothing and a replica whose memory climbs
for ten minutes (benchmarks/README.md, "Soak": +6.9 % after warm-up as is, +1.7 % with this fix).
`install()` replaces the method with the same one plus `timer.cancel()` once the request ends; a
request over the timeout still gets BentoML's 504.
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
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    __call__._manylabel_fixed = True  # type: ignore[attr-defined]
    traffic.TimeoutMiddleware.__call__ = __call__
