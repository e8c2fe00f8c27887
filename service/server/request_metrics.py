"""BentoML 1.4.39's per-request Prometheus metrics, the same series for less work per request.

`bentoml/_internal/server/http/instruments.py` `RunnerTrafficMetricsMiddleware.__call__`, for every
HTTP request, looks each of its four series up with `labels(...)` (five label values turned into a
checked tuple under a lock, ~4 us each here) and counts the request and its duration *before* the
final body message is sent, so every answer waits for them. `install()` replaces the method for
HTTP requests: the same series with the same labels (`bentoml_service_request_total`,
`_request_duration_seconds`, `_request_in_progress`, `_last_request_timestamp_seconds`), their
children looked up once per endpoint and status, and the request counted once its answer is sent.
Websocket scopes and `/metrics` keep BentoML's code.
"""

from __future__ import annotations

from collections.abc import Callable
from timeit import default_timer
from typing import Any

MAX_CACHED = 256  # endpoints (and statuses) whose children are kept; BentoML labels any path


class _Series:
    """The children of one middleware's series, looked up once per label values."""

    def __init__(self, middleware: Any) -> None:
        from bentoml._internal.context import server_context

        self.middleware = middleware
        self.names = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        self.last = middleware.metrics_last_request_timestamp.labels(**self.names)
        self.skip = tuple(middleware.skip_paths)  # paths that leave the last-request time alone
        self._in_progress: dict[str, Any] = {}
        self._answered: dict[tuple[str, int], tuple[Any, Any]] = {}

    def in_progress(self, endpoint: str) -> Any:
        child = self._in_progress.get(endpoint)
        if child is None:
            child = self.middleware.metrics_request_in_progress.labels(endpoint=endpoint, **self.names)
            if len(self._in_progress) < MAX_CACHED:
                self._in_progress[endpoint] = child
        return child

    def answered(self, endpoint: str, status: int) -> tuple[Any, Any]:
        """(request total, request duration) children of an endpoint and status."""
        children = self._answered.get((endpoint, status))
        if children is None:
            m = self.middleware
            labels = {"endpoint": endpoint, "http_response_code": status, **self.names}
            children = m.metrics_request_total.labels(**labels), m.metrics_request_duration.labels(**labels)
            if len(self._answered) < MAX_CACHED:
                self._answered[(endpoint, status)] = children
        return children


def install() -> None:
    from bentoml._internal.server.http import instruments

    cls = instruments.RunnerTrafficMetricsMiddleware
    original = cls.__call__
    if getattr(original, "_manylabel_fixed", False):
        return

    async def __call__(self: Any, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await original(self, scope, receive, send)
        if not self._is_setup:
            self._setup()
        series: _Series | None = self.__dict__.get("_manylabel_series")
        if series is None:
            series = self._manylabel_series = _Series(self)
        endpoint = scope["path"]
        if not endpoint.startswith(series.skip):
            series.last.set_to_current_time()
        start = default_timer()
        status = 0

        async def counted_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                return await send(message)
            try:
                await send(message)
            finally:  # counted once the answer is out
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    total, duration = series.answered(endpoint, status)
                    total.inc()
                    duration.observe(max(default_timer() - start, 0))

        in_progress = series.in_progress(endpoint)
        in_progress.inc()
        try:
            await self.app(scope, receive, counted_send)
        finally:
            in_progress.dec()

    __call__._manylabel_fixed = True  # type: ignore[attr-defined]
    cls.__call__ = __call__
