"""A response's head and its first body message in one socket write, not two.

uvicorn 0.55's httptools protocol (`RequestResponseCycle.send`) writes the status line and headers
when the app sends `http.response.start`, then the body on `http.response.body`: two `send()`
system calls and two TCP segments per answer, and a client that reads the headers and then the
body is woken twice (served at concurrency 1, 256 px int8: faster in 5 of 6 alternating rounds
with the writes joined; README, *Measured here*). `install()` holds the head and writes it in front
of the first body message (one write; a body over `JOIN_MAX_BYTES` goes in a write of its own
rather than be copied behind the head); when no body message follows within the same event-loop
turn (a stream whose first chunk takes time), a `call_soon` writes the head alone, as uvicorn did.
Where httptools is not installed uvicorn serves with h11, which is left as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

HEAD = "_manylabel_head"  # on a RequestResponseCycle: (head bytes, the call_soon that writes them)
JOIN_MAX_BYTES = 64 * 1024  # bigger bodies span several segments anyway: not worth a copy


class _Hold:
    """Stands in for the transport while uvicorn writes the head: keeps it instead."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Prefix:
    """Stands in for the transport while uvicorn writes a body message: the head goes in front."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        if head is not None and len(data) <= JOIN_MAX_BYTES:
            data = head + data
        elif head is not None:
            self.transport.write(head)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _write_head(cycle: Any) -> None:
    """The call_soon: no body message came in the turn the head was sent; write it alone."""
    held = cycle.__dict__.pop(HEAD, None)
    if held is not None and not cycle.disconnected and not cycle.transport.is_closing():
        cycle.transport.write(held[0])


def install() -> bool:
    """Patch uvicorn's httptools cycle (once); False where it is not there to patch."""
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:  # no httptools: uvicorn uses h11
        return False
    cycle_class = httptools_impl.RequestResponseCycle
    original = cycle_class.send
    if getattr(original, "_manylabel_fixed", False):
        return True

    async def send(self: Any, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport = self.transport
            self.transport = hold = _Hold(transport)
            try:
                await original(self, message)
            finally:
                self.transport = transport
            if hold.data:
                call = asyncio.get_running_loop().call_soon(_write_head, self)
                setattr(self, HEAD, (hold.data, call))
            return
        held = self.__dict__.pop(HEAD, None)
        if held is None:
            return await original(self, message)
        head, call = held
        call.cancel()
        transport = self.transport
        self.transport = prefix = _Prefix(transport, head)
        try:
            await original(self, message)
        finally:
            self.transport = transport
        if prefix.head is not None and not self.disconnected:  # nothing written: a HEAD request
            transport.write(head)

    send._manylabel_fixed = True  # type: ignore[attr-defined]
    cycle_class.send = send
    return True
