"""One request's images through the decode pool and the batcher, for `Predictor.predict_async`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from service.server.batcher import Batcher, settle
from service.server.http.uploads import InputFile


class Decoder(Protocol):
    """What a request needs of its predictor: `decode` and the pool that runs it."""

    decode_pool: Executor

    def decode(self, file: InputFile) -> np.ndarray: ...


class RequestImages:
    """One request's images on their way through the decode pool and the batcher (thread-safe).

    At most `window` images are decoded or queued at once; each scored image lets the next one
    in. The first error fails the request and stops its remaining work.
    """

    def __init__(
        self,
        predictor: Decoder,
        files: Sequence[InputFile],
        batcher: Batcher,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future,
        window: int,
    ) -> None:
        self.predictor, self.batcher, self.loop, self.future = predictor, batcher, loop, future
        self.rows: list[np.ndarray | None] = [None] * len(files)
        self.remaining = len(files)
        self.pending = iter(enumerate(files))
        self.window = window
        self.lock = threading.Lock()
        self.failed = False

    def start(self) -> None:
        for _ in range(self.window):
            self._decode_next()

    def _decode_next(self) -> None:
        with self.lock:
            item = None if self.failed or self.future.done() else next(self.pending, None)
        if item is not None:
            self.batcher.expect(1)  # tells the batcher more work is on its way (`Batcher`'s crowding)
            try:
                self.predictor.decode_pool.submit(self._decode, *item)
            except RuntimeError as exc:  # the pool was shut down (the predictor closed) meanwhile
                # Raised here it left the image announced forever and, from a worker thread's
                # `done`, ended that worker.
                self.batcher.expect(-1)
                self._fail(exc)

    def _decode(self, index: int, file: InputFile) -> None:  # on a decode thread
        if self.failed or self.future.done():  # failed, or the client went away
            self.batcher.expect(-1)
            return
        try:
            image = self.predictor.decode(file)
        except BaseException as exc:
            self.batcher.expect(-1)
            self._fail(exc)
            return
        try:
            done = lambda scores, error: self._scored(index, scores, error)  # noqa: E731
            self.batcher.put(image, done, expected=True, here=True)
        except BaseException as exc:
            self._fail(exc)

    def _scored(self, index: int, scores: np.ndarray | None, error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
            return
        with self.lock:
            self.rows[index] = scores
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.loop.call_soon_threadsafe(settle, self.future, self.rows, None)
        else:
            self._decode_next()

    def _fail(self, error: BaseException) -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        self.loop.call_soon_threadsafe(settle, self.future, None, error)
