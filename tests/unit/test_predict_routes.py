"""PredictRoutes, the ASGI middleware that answers POST /predict*, driven with ASGI messages.

The HTTP behaviour through a real `bentoml serve` is in tests/service; these cover what a live server
cannot be made to do on demand: a handler that crashes, a client that leaves mid-body, chunked bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from service.errors import RequestError
from service.server.http.budget import Reservation
from service.server.http.predict import PredictRoutes, Reply
from service.server.http.uploads import Form, Limits

BOUNDARY = "xyz"


def body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def scope(path: str = "/predict", method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
    return {"type": "http", "method": method, "path": path, "headers": headers}


def call(app: PredictRoutes, sc: dict[str, Any], chunks: list[bytes], disconnect: bool = False) -> list[dict]:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(sc, receive, send))
    return sent


def answer(sent: list[dict]) -> tuple[int, dict[bytes, bytes], bytes]:
    start, content = sent
    return start["status"], dict(start["headers"]), content["body"]


def routes(handler, inner=None) -> PredictRoutes:
    async def not_reached(scope, receive, send) -> None:
        raise AssertionError("the request went past PredictRoutes")

    return PredictRoutes(
        inner or not_reached, paths={"/predict", "/predict_bundle"}, limits=Limits, handler=handler
    )


def test_the_form_reaches_the_handler_across_chunks_and_its_reply_is_sent() -> None:
    seen: list[tuple[Form, str]] = []

    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        seen.append((form, route))
        return Reply(
            200, b"zip bytes", "application/zip", (("Content-Disposition", 'attachment; filename="p.zip"'),)
        )

    data = body(("which", None, b"last"), ("images", "a b.jpg", b"\xff\xd8 jpeg"))
    sent = call(routes(handler), scope("/predict_bundle"), [data[:7], data[7:40], data[40:]])
    status, headers, content = answer(sent)
    assert status == 200 and content == b"zip bytes"
    assert headers[b"content-type"] == b"application/zip" and headers[b"content-length"] == b"9"
    assert headers[b"content-disposition"] == b'attachment; filename="p.zip"'
    ((form, route),) = seen
    assert route == "/predict_bundle" and form.fields == {"which": ["last"]}
    assert [(p.filename, bytes(p.data)) for p in form.files] == [("a b.jpg", b"\xff\xd8 jpeg")]


def test_a_refusal_from_the_handler_is_its_status_and_json() -> None:
    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        raise RequestError("model: 'worst' is not a model", field="model")

    status, _, content = answer(call(routes(handler), scope(), [body(("model", None, b"worst"))]))
    assert status == 400 and json.loads(content) == {
        "error": "model: 'worst' is not a model",
        "field": "model",
    }


def test_a_bad_body_is_a_4xx_before_the_handler_runs() -> None:
    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        raise AssertionError("handler called for a bad body")

    truncated = body(("images", "a.jpg", b"x"))[:-10]
    status, _, content = answer(call(routes(handler), scope(), [truncated]))
    assert status == 400 and "truncated upload" in json.loads(content)["error"]
    status, _, content = answer(call(routes(handler), scope(), [b"--xyz\r\nnot a part"]))
    assert status == 400 and "malformed multipart body" in json.loads(content)["error"]


def test_a_crashing_handler_is_a_logged_500_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        raise RuntimeError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="bentoml.manylabel"):
        status, _, content = answer(call(routes(handler), scope(), [body(("images", "a.jpg", b"x"))]))
    assert status == 500
    assert b"secret" not in content and "server log" in json.loads(content)["error"]
    assert "secret internal detail" in caplog.text and "POST /predict failed" in caplog.text


def test_a_client_that_leaves_mid_body_gets_nothing_and_the_handler_never_runs() -> None:
    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        raise AssertionError("handler called after a disconnect")

    assert call(routes(handler), scope(), [body(("images", "a.jpg", b"x"))[:20]], disconnect=True) == []


def test_other_methods_and_paths_go_to_the_wrapped_app() -> None:
    passed: list[tuple[str, str]] = []

    async def inner(sc, receive, send) -> None:
        passed.append((sc["method"], sc["path"]))

    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        raise AssertionError("handler called for a route it does not own")

    app = routes(handler, inner)
    for sc in (scope("/predict", "GET"), scope("/stats", "POST"), scope("/predict/", "POST")):
        assert call(app, sc, [b""]) == []
    assert passed == [("GET", "/predict"), ("POST", "/stats"), ("POST", "/predict/")]
