"""service.server.timeouts: BentoML's TimeoutMiddleware with its per-request timer cancelled."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.server.timeouts import install


def _run(app, timeout: float) -> tuple[list, list]:
    install()
    middleware = TimeoutMiddleware(app, timeout=timeout)
    sent: list = []
    handles: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def spy(delay, callback, *args):
            handle = call_later(delay, callback, *args)
            handles.append(handle)
            return handle

        loop.call_later = spy  # type: ignore[method-assign]

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            sent.append(message)

        for _ in range(5):
            await middleware({"type": "http"}, receive, send)

    asyncio.run(main())
    return sent, handles


def test_every_request_timer_is_cancelled_when_the_answer_is_sent() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent, handles = _run(app, timeout=600)
    assert len(handles) == 5 and all(handle.cancelled() for handle in handles)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 5


def test_a_request_over_the_timeout_still_gets_504() -> None:
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(5)

    sent, handles = _run(slow, timeout=0.01)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [504] * 5
