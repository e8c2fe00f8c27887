"""One ONNX graph on the CPU, run by inference calls that may overlap: all cores for a call alone,
a share of them each when calls overlap.

onnxruntime fixes a session's intra-op thread count when it is opened. One call alone is fastest
with every core (batch 1 on 2 cores: 75 vs 44 images/s with one thread), but two overlapping calls
on a 2-thread session put three threads on two cores: on the 2-core AVX2 benchmark machine two
1-thread sessions scored 99-105 images/s where the shared 2-thread session scored 94-104 (fp32),
and over HTTP at 8-32 requests in flight the server spent 21-24 ms of CPU per image with 1-thread
calls against 23-29 ms with the shared session. So a graph keeps two sessions: `wide` for a call
that runs alone, `narrow` (cores / workers threads) for calls that overlap. The narrow one is
opened in the background the first time calls overlap, so a graph that never sees overlapping
calls (best/last and precisions nobody asks for under load) costs no second session's memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)


class Graph:
    """A wide session, and a narrow one opened on first overlap by `open_narrow` (None: never)."""

    def __init__(
        self,
        wide: ort.InferenceSession,
        open_narrow: Callable[[], ort.InferenceSession] | None = None,
        *,
        name: str = "graph",
    ) -> None:
        self.wide = wide
        self.narrow: ort.InferenceSession | None = None
        self._open_narrow = open_narrow
        self._name = name
        self._lock = threading.Lock()
        self._opening: threading.Thread | None = None

    def session(self, *, crowded: bool) -> ort.InferenceSession:
        """The session for one call: narrow when other calls overlap it and narrow is open yet."""
        if not crowded or self._open_narrow is None:
            return self.wide
        if self.narrow is not None:
            return self.narrow
        with self._lock:
            if self._opening is None:  # opening takes ~0.3 s: never on the request path
                # Not a daemon (said explicitly: it is started from daemon threads, whose flag it
                # would inherit): the interpreter waits for it at exit. A process that ended while a
                # daemon thread was inside onnxruntime's session constructor aborted ("terminate
                # called without an active exception", status -6: `manylabel demo`).
                self._opening = threading.Thread(target=self._open, name=f"open-{self._name}", daemon=False)
                self._opening.start()
        return self.wide

    def wait_narrow(self, timeout: float | None = None) -> bool:
        """Wait for a narrow session being opened; True when one is open (for tests and warm-ups)."""
        with self._lock:
            opening = self._opening
        if opening is not None:
            opening.join(timeout)
        return self.narrow is not None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray], *, crowded: bool = False) -> list:
        return self.session(crowded=crowded).run(outputs, feeds)

    def _open(self) -> None:
        assert self._open_narrow is not None
        try:
            self.narrow = self._open_narrow()
        except Exception:  # the wide session keeps serving; logged once, never retried
            logger.warning(
                "%s: could not open the narrow session; overlapping calls share the wide one",
                self._name,
                exc_info=True,
            )
