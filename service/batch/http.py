"""One batch request, POST /predict or GET /model, with bounded, jittered retries.

Failures: 503 / 429 / 502 / 504, connection errors and timeouts are retried with exponential backoff
and full jitter (bounded: `RetryPolicy`); other answers are not retried.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overload, or a proxy that lost the pod


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # tries per request, the first included
    base_s: float = 0.5  # backoff before try k+1 is uniform in [0, min(cap, base * 2**k)] ("full jitter")
    cap_s: float = 30.0  # longest single wait; 8 tries wait at most ~60 s in all

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed try number `attempt` (0-based); Retry-After is a floor."""
        wait = rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait


@dataclass
class Outcome:
    answer: dict[str, Any] | None = None
    status: int | None = None
    reason: str = ""
    retry: bool = False  # a later run should try again
    attempts: int = 0
    field: str | None = None  # the form field a refusal blames, from the service's error body


async def post_images(
    client: httpx.AsyncClient,
    files: list[tuple[str, bytes]],
    fields: dict[str, str],
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    """POST /predict with retries on overload and transport errors; never retries other answers."""
    upload = [("images", (name, data)) for name, data in files]
    return await _with_retries(
        lambda: client.post("/predict", data=fields, files=upload), _is_list("images"), policy, rng
    )


async def get_model(client: httpx.AsyncClient, policy: RetryPolicy, rng: random.Random) -> Outcome:
    """GET /model (the served model and the server's limits), with the same retries."""
    return await _with_retries(lambda: client.get("/model"), _is_dict("serving"), policy, rng)


async def _with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    valid: Callable[[Any], bool],
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    error, status = "", None
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            response = await send()
        except httpx.TransportError as exc:  # connect, read, write, pool timeouts, protocol errors
            error, status = f"{type(exc).__name__}: {exc}".rstrip(": "), None
        else:
            status = response.status_code
            if status == 200:
                answer = _json(response)
                if valid(answer):
                    return Outcome(answer=answer, status=200, attempts=attempt + 1)
                error = "HTTP 200 without the expected answer in the body"  # a proxy's page: try again
            else:
                error = _reason(response)
                if status not in RETRY_STATUSES:
                    # 4xx: the request itself is wrong, sending it again cannot help. Other 5xx: a
                    # bug; not hammered now, but a later run tries again.
                    return Outcome(
                        status=status,
                        reason=error,
                        retry=status >= 500,
                        attempts=attempt + 1,
                        field=_field(response),
                    )
                retry_after = _retry_after(response)
        if attempt + 1 < policy.attempts:
            await asyncio.sleep(policy.delay(attempt, retry_after, rng))
    return Outcome(
        status=status,
        reason=f"gave up after {policy.attempts} tries: {error}",
        retry=True,
        attempts=policy.attempts,
    )


def _is_list(key: str) -> Callable[[Any], bool]:
    return lambda answer: isinstance(answer, dict) and isinstance(answer.get(key), list)


def _is_dict(key: str) -> Callable[[Any], bool]:
    return lambda answer: isinstance(answer, dict) and isinstance(answer.get(key), dict)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error") or body.get("message") or json.dumps(body)
    except (ValueError, AttributeError):
        message = response.text[:300]
    return f"HTTP {response.status_code}: {message}"


def _field(response: httpx.Response) -> str | None:
    body = _json(response)
    field = body.get("field") if isinstance(body, dict) else None
    return field if isinstance(field, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
