"""service.server.request_metrics: BentoML's request series, looked up once, counted after the answer.
BentoML's own middleware object and metrics client; the app and the server's `send` are plain ASGI."""

from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.context import server_context
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

from service.server.request_metrics import install


def _labels(endpoint: str, status: int | None = None) -> dict:
    labels = {
        "endpoint": endpoint,
        "service_name": server_context.bento_name,
        "service_version": server_context.bento_version,
        "runner_name": server_context.service_name,
    }
    return labels if status is None else {**labels, "http_response_code": status}


def _value(child) -> float:
    return child._value.get()


@pytest.fixture(scope="module")
def middleware_and_app():
    install()
    state: dict = {"status": 200, "fail": False}

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": state["status"], "headers": []})
        if state["fail"]:
            raise ValueError("the app failed mid-answer")
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = RunnerTrafficMetricsMiddleware(app)
    return middleware, state


def _call(middleware, path: str, send) -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    asyncio.run(middleware({"type": "http", "path": path}, receive, send))


def test_a_request_is_counted_once_its_answer_is_sent(middleware_and_app) -> None:
    middleware, _ = middleware_and_app
    seen: list[tuple[str, float]] = []

    async def send(message: dict) -> None:
        if middleware._is_setup:
            total = middleware.metrics_request_total.labels(**_labels("/predict-a", 200))
            seen.append((message["type"], _value(total)))

    _call(middleware, "/predict-a", send)
    _call(middleware, "/predict-a", send)
    # BentoML's own code counted before the final send: (…body, 1.0) on the first request
    assert seen == [
        ("http.response.start", 0.0),
        ("http.response.body", 0.0),
        ("http.response.start", 1.0),
        ("http.response.body", 1.0),
    ]
    duration = middleware.metrics_request_duration.labels(**_labels("/predict-a", 200))
    assert sum(b.get() for b in duration._buckets) == 2
    assert _value(middleware.metrics_request_in_progress.labels(**_labels("/predict-a"))) == 0


def test_children_are_looked_up_once_per_endpoint_and_status(middleware_and_app, monkeypatch) -> None:
    middleware, state = middleware_and_app

    async def send(message: dict) -> None: ...

    _call(middleware, "/predict-b", send)  # sets the middleware up
    calls: list[dict] = []
    real = middleware.metrics_request_total.labels
    monkeypatch.setattr(
        middleware.metrics_request_total, "labels", lambda **kw: calls.append(kw) or real(**kw)
    )
    for _ in range(3):
        _call(middleware, "/predict-b", send)
    state["status"] = 400
    try:
        for _ in range(2):
            _call(middleware, "/predict-b", send)
    finally:
        state["status"] = 200
    assert [c["http_response_code"] for c in calls] == [400]  # 200 was looked up before the spy
    assert _value(middleware.metrics_request_total.labels(**_labels("/predict-b", 400))) == 2


def test_an_app_failing_mid_answer_leaves_nothing_in_progress(middleware_and_app) -> None:
    middleware, state = middleware_and_app

    async def send(message: dict) -> None: ...

    state["fail"] = True
    try:
        with pytest.raises(ValueError):
            _call(middleware, "/predict-c", send)
    finally:
        state["fail"] = False
    assert _value(middleware.metrics_request_in_progress.labels(**_labels("/predict-c"))) == 0
    assert _value(middleware.metrics_request_total.labels(**_labels("/predict-c", 200))) == 0
