"""Reference, not a peer: the floor of serving over HTTP from Python on this machine.

A bare uvloop `asyncio.Protocol` speaking just enough HTTP/1.1 for the benchmark's requests
(keep-alive, a Content-Length body, the first file of a multipart form, no validation, no limits):
each request is decoded and scored inside `data_received` on the event loop (batch 1, intra-op
threads = cores) and answered with one socket write. After an answer the loop lingers, turning,
up to 2 ms for the next request: manylabel's own `http.linger.Linger` at its `MANYLABEL_LINGER_MS`
default (a halted vCPU made the next request slower). What it leaves out is every framework cost:
ASGI, routing, middlewares, form parsing, metrics. In-process ÷ bare is what the HTTP round trip itself costs
(kernel, loopback, the client); bare ÷ manylabel is what the framework and our request path cost.
Only meaningful at concurrency 1: it serves one request at a time.

    python benchmarks/peers/bare_server.py --model-dir DIR --port P [--precision int8]
"""

from __future__ import annotations

import asyncio
import json

import uvloop
from common import Model, parse_args  # benchmarks/peers/ is sys.path[0]

from service.server.http.linger import Linger  # manylabel's own, at its default
from service.server.settings import Settings

LINGER = Linger(Settings.model_fields["linger_ms"].default / 1000)


class Bare(asyncio.Protocol):
    model: Model
    arrivals = 0  # data_received calls on any connection: the linger's stop signal

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.end: int | None = None  # where the current request's body ends in the buffer
        self.body_at = 0

    def data_received(self, data: bytes) -> None:
        Bare.arrivals += 1
        self.buffer += data
        while self._complete():
            request, self.end = bytes(self.buffer[: self.end]), None
            del self.buffer[: len(request)]
            self._answer(request)

    def _complete(self) -> bool:
        if self.end is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return False
            length = 0
            for line in bytes(self.buffer[:head_end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.body_at, self.end = head_end + 4, head_end + 4 + length
        return len(self.buffer) >= self.end

    def _answer(self, request: bytes) -> None:
        body = request[self.body_at :]
        part_head_end = body.find(b"\r\n\r\n")  # the first part: the image
        disposition = body[:part_head_end]
        name = disposition.partition(b'filename="')[2].partition(b'"')[0].decode() or "image"
        data = body[part_head_end + 4 : body.find(b"\r\n--", part_head_end)]
        scores = self.model.infer(self.model.decode(data)[None])[0]
        out = json.dumps({"count": 1, "images": [self.model.answer(name, scores)]}).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out)
        self.transport.write(head + out)
        seen = Bare.arrivals
        LINGER.start(lambda: Bare.arrivals != seen)  # until the next request's bytes arrive


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    Bare.model = Model(args.model_dir, args.intra_op_threads, args.precision)
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
