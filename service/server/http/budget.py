"""One worker's budget of request bytes in memory: bodies being read and images unzipped from them.

A request reserves what it holds (its Content-Length up front when declared, else each chunk as it
arrives; each zip member's size before it is read) and gives it all back when it ends. A request
that would take the worker past its budget is answered 503 with Retry-After instead of growing the
process until the kernel's OOM killer ends every request on the replica. The budget also counts
the requests holding a reservation: one alone may be scored on the event loop (`Reservation.alone`).
"""

from __future__ import annotations

import threading

from service.errors import RequestError


class Overloaded(RequestError):
    """The worker holds as many request bytes as it may; the client should retry shortly."""

    status = 503
    retry_after = 1


class ByteBudget:
    """Bytes the worker's requests may hold at once (thread-safe: zips expand on worker threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.holders = 0  # open `Reservation`s: requests in progress
        self._lock = threading.Lock()

    def count(self, change: int) -> None:
        with self._lock:
            self.holders += change

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Reservation:
    """What one request holds of a `ByteBudget`; `close()` gives it back (call it in a finally)."""

    def __init__(self, budget: ByteBudget | None, *, sole_client: bool = False) -> None:
        self.budget = budget
        self.held = 0
        self.open = budget is not None
        self.sole_client = sole_client  # the worker's only recent client (`clients.RecentClients`)
        if budget is not None:
            budget.count(1)

    def alone(self) -> bool:
        """From the worker's only recent client, and no other request of the worker holds a
        reservation (False without a budget)."""
        return self.sole_client and self.open and self.budget is not None and self.budget.holders == 1

    def take(self, size: int) -> None:
        if self.budget is None or size <= 0:
            return
        if not self.budget.reserve(size):
            raise Overloaded(
                f"the server holds {self.budget.used:,} bytes of uploads, its limit is "
                f"{self.budget.limit:,}; "
                "retry in a moment (or send smaller requests)"
            )
        self.held += size

    def close(self) -> None:
        if self.budget is not None and self.held:
            self.budget.release(self.held)
        self.held = 0
        if self.open and self.budget is not None:
            self.budget.count(-1)
        self.open = False
