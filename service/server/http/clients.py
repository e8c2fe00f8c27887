"""Which connections sent predict requests lately: a request from the worker's only recent client
may be served on the event loop (`Predictor.predict_async(alone=...)`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RecentClients:
    """The connections (ASGI `scope["client"]`) that sent a request within the last `window_s`.

    Event-loop only. A client alone on the worker sends its next request only after its answer, so
    nothing waits while its image is scored on the loop; with two or more connections sending
    (concurrent clients, a batch client, a proxy's pool), another request may arrive meanwhile and
    would wait: measured at 2 in flight, scoring on the loop cost ~10 % of the images/s.
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[Hashable, float] = {}

    def sole(self, client: Hashable | None) -> bool:
        """Record a request of `client`; whether no other connection sent one within the window.
        An unknown client (None) is never sole."""
        now = self.clock()
        if client is None:
            return False
        seen = self._seen
        seen[client] = now
        if len(seen) > 1:
            oldest = now - self.window_s
            for stale in [c for c, t in seen.items() if t < oldest]:
                del seen[stale]
        return len(seen) == 1
