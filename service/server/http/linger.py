"""After answering a client alone, keep the event loop turning for a moment instead of sleeping.

A client alone (one connection, one request at a time) sends its next request a fraction of a
millisecond after its answer. Blocked in `epoll_wait` meanwhile, the worker's thread lets its
virtual CPU halt, and on a VM the request that wakes it then runs slower: on a 2-core AVX-512 KVM
guest, decode + int8 call of a 256-px image took 5.8 ms back to back, 7.1 ms after a 2 ms sleep
and 6.1 ms after 2 ms of busy waiting (medians); served at concurrency 1, four alternating rounds
of 4 s, 137-157 images/s lingering 2 ms against 130-147 without. `Linger` keeps the loop turning
(each turn polls the sockets without blocking) until a request starts or `seconds` pass, so the
next request finds a thread that is awake. It costs at most `seconds` of one core per answer, and
only when the worker has nothing else to do: under load requests overlap and it never starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Linger:
    """Turns the event loop for up to `seconds` after `start()`, until `busy()` says a request began.

    Event-loop only. One lingering task at a time; `seconds` 0 turns it off.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.turns = 0  # loop turns spent lingering, for tests and curiosity
        self._task: asyncio.Task[None] | None = None

    def start(self, busy: Callable[[], bool]) -> None:
        """Linger now, unless it is off or already lingering."""
        if self.seconds <= 0 or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._linger(busy))

    async def _linger(self, busy: Callable[[], bool]) -> None:
        until = self.clock() + self.seconds
        while not busy() and self.clock() < until:
            self.turns += 1
            await asyncio.sleep(0)  # one loop turn: the sockets are polled with a zero timeout
