"""service.server.timeouts: BentoML's TimeoutMiddleware in the request's task, its timer cancelled."""

from __future__ import annotations

import asyncio
import time

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.server.timeouts import install


def _run(app, timeout: float, requests: int = 5) -> tuple[list, list]:
    install()
    middleware = TimeoutMiddleware(app, timeout=timeout)
    sent: list = []
    handles: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at  # every timer: asyncio's call_later goes through it too

        def spy(*args, **kwargs):
            handle = call_at(*args, **kwargs)
            handles.append(handle)
            return handle

        loop.call_at = spy  # type: ignore[method-assign]

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            sent.append(message)

        for _ in range(requests):
            await middleware({"type": "http"}, receive, send)

    asyncio.run(main())
    return sent, handles


def _statuses(sent: list) -> list[int]:
    return [m["status"] for m in sent if m["type"] == "http.response.start"]


def test_every_request_timer_is_cancelled_when_the_answer_is_sent() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent, handles = _run(app, timeout=600)
    assert len(handles) == 5 and all(handle.cancelled() for handle in handles)
    assert _statuses(sent) == [200] * 5


def test_a_request_over_the_timeout_still_gets_504() -> None:
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(5)

    sent, handles = _run(slow, timeout=0.01)
    assert _statuses(sent) == [504] * 5
    assert b"Not able to process the request in 0.01 seconds" in sent[1]["body"]


def test_an_answer_that_started_in_time_is_not_cut_short() -> None:
    async def streaming(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.05)  # longer than the timeout, after the answer started
        await send({"type": "http.response.body", "body": b"all of it"})

    sent, _ = _run(streaming, timeout=0.01, requests=1)
    assert _statuses(sent) == [200] and sent[-1]["body"] == b"all of it"


def test_the_app_runs_in_the_requests_own_task() -> None:
    tasks: list = []

    async def app(scope, receive, send) -> None:
        tasks.append(asyncio.current_task())
        await send({"type": "http.response.start", "status": 200, "headers": []})

    install()
    middleware = TimeoutMiddleware(app, timeout=600)

    async def main() -> None:
        async def send(message: dict) -> None:
            pass

        await middleware({"type": "http"}, None, send)
        assert tasks == [asyncio.current_task()]  # BentoML's own made a task per request

    asyncio.run(main())


@pytest.mark.parametrize("error", [RuntimeError("boom"), TimeoutError("the app's own")])
def test_an_error_before_the_answer_is_raised_at_once(error: Exception) -> None:
    async def failing(scope, receive, send) -> None:
        await asyncio.sleep(0)
        raise error

    started = time.monotonic()
    with pytest.raises(type(error), match=str(error)):
        _run(failing, timeout=600, requests=1)
    assert time.monotonic() - started < 5  # BentoML's own waited the whole timeout, then a 504
