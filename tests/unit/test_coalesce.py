"""service.server.http.coalesce: uvicorn's httptools protocol writes an answer's head and its first
body message in one transport write. Real uvicorn protocol objects; the transport records writes
(a socket's segments cannot be counted reliably from the other end)."""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.server.http.coalesce import JOIN_MAX_BYTES, install

GET = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


class Transport(asyncio.Transport):
    """Records what uvicorn writes, as a socket transport would take it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _serve(app, request: bytes = GET, *, settle: float = 0.2) -> Transport:
    """One request through a real HttpToolsProtocol with the fix installed; the transport's writes."""
    assert install()
    transport = Transport()

    async def main() -> None:
        config = uvicorn.Config(app, http="httptools", log_config=None, lifespan="off")
        config.load()
        protocol = HttpToolsProtocol(config, ServerState(), app_state={})
        protocol.connection_made(transport)
        protocol.data_received(request)
        await asyncio.sleep(settle)  # the app's task runs; and a head waiting alone would be written

    asyncio.run(main())
    return transport


def _head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_an_answer_is_one_write_with_head_and_body() -> None:
    async def app(scope, receive, send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"12")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    transport = _serve(app)
    assert len(transport.writes) == 1
    head, body = _head_and_body(transport.writes[0])
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 12" in head
    assert body == b'{"ok": true}'


def test_a_big_body_goes_in_a_write_of_its_own_behind_the_head() -> None:
    body = b"x" * (JOIN_MAX_BYTES + 1)

    async def app(scope, receive, send) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    transport = _serve(app)
    assert len(transport.writes) == 2 and transport.writes[1] == body
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(b"\r\n\r\n")


def test_a_stream_goes_head_with_its_first_chunk_then_chunk_by_chunk() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport = _serve(app)
    assert len(transport.writes) == 4
    head, first = _head_and_body(transport.writes[0])
    assert b"transfer-encoding: chunked" in head and first == b"3\r\none\r\n"
    assert transport.writes[1:] == [b"3\r\ntwo\r\n", b"5\r\nthree\r\n", b"0\r\n\r\n"]


def test_the_head_goes_alone_when_the_first_chunk_takes_time() -> None:
    seen: list[int] = []
    transport_box: list[Transport] = []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await asyncio.sleep(0.05)  # a slow first chunk: the client has the headers meanwhile
        seen.append(len(transport_box[0].writes))
        await send({"type": "http.response.body", "body": b"ok"})

    original = Transport.__init__

    def keep(self) -> None:
        original(self)
        transport_box.append(self)

    Transport.__init__ = keep  # type: ignore[method-assign]
    try:
        transport = _serve(app)
    finally:
        Transport.__init__ = original  # type: ignore[method-assign]
    assert seen == [1]
    assert transport.writes[0].endswith(b"\r\n\r\n") and transport.writes[1:] == [b"ok"]


def test_a_head_request_and_uvicorns_own_500_are_one_write_each() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    transport = _serve(app, b"HEAD / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\n")

    async def broken(scope, receive, send) -> None:
        raise ValueError("the app failed before answering")

    transport = _serve(broken)
    assert len(transport.writes) == 1
    head, body = _head_and_body(transport.writes[0])
    assert head.startswith(b"HTTP/1.1 500") and body == b"Internal Server Error"


def test_an_app_failing_after_the_head_never_writes_it_on_a_closed_connection() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise ValueError("failed mid-answer")

    transport = _serve(app)
    assert transport.closed and transport.writes == []  # uvicorn closes it: the answer is cut either way


def test_keep_alive_requests_each_get_one_write() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        await send({"type": "http.response.body", "body": scope["path"][-1:].encode()})

    pipelined = b"".join(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
    transport = _serve(app, pipelined)
    assert [_head_and_body(w)[1] for w in transport.writes] == [b"0", b"1", b"2"]


def test_install_is_idempotent() -> None:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    assert install()
    patched = RequestResponseCycle.send
    assert install() and RequestResponseCycle.send is patched
