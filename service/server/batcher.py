"""Adaptive batching: single images from decode threads grouped into onnxruntime calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

Done = Callable[[np.ndarray | None, BaseException | None], None]  # (scores, error), from a worker thread


class OverloadedError(RuntimeError):
    """More images wait for inference than the queue allows; the client should retry later."""


class Batcher:
    """Adaptive batching of single images into onnxruntime calls, on worker threads.

    Decode threads `put` images straight into the queue and `workers` inference threads take them,
    so an image costs the event loop one wake-up (shared by its whole batch), not one per stage.
    An image alone (nothing else queued, decoding or running) is run by the decode thread itself
    (`put(here=True)`): at concurrency 1 the hand-over to a worker thread cost 0.12 ms of a 10 ms answer;
    a request of one small image alone is decoded and run on the event loop (`run_alone`).
    Greedy: an idle worker takes its share of what is queued (up to `max_batch_size`) at once;
    while every worker is busy new images queue up, so batches grow with the load and an idle
    service adds no latency. With `max_latency_ms` > 0 a worker waits up to that long for more
    images while the batch is not full (worth it on a GPU). Answers "overloaded" only when more
    than `max_queue` images wait, never because of latency.

    A call is *crowded* when, with several workers, another one is busy, or images wait or are on
    their way (announced with `expect` while they decode) after it took its batch: then it runs
    `infer_crowded` (a narrow session, so overlapping calls share the cores instead of
    oversubscribing them) where one is given, else `infer`. Counting the images on their way
    matters: without it, at 8 requests in flight a worker often found the queue empty for a moment,
    ran wide, and overlapped the next call.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        workers: int,
        max_batch_size: int,
        max_latency_ms: float = 0.0,
        max_queue: int = 2048,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "infer",
        infer_crowded: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self._infer = infer
        self._infer_crowded = infer_crowded or infer
        self._workers = workers
        self._max_batch = max_batch_size
        self._max_wait = max_latency_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[tuple[np.ndarray, Done, float]] = deque()
        self._ready = threading.Condition()
        self._idle = workers
        self._coming = 0  # images announced with `expect`, not yet `put`
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def expect(self, count: int) -> None:
        """`count` more (negative: fewer) images are on their way: decoding, to be `put(expected=True)`
        or dropped with `expect(-1)`."""
        with self._ready:
            self._coming += count

    def put(self, image: np.ndarray, done: Done, *, expected: bool = False, here: bool = False) -> None:
        """Queue one (S, S, 3) image; `done(scores, error)` is called from a worker thread.
        `expected`: the image was announced with `expect` (it is no longer on its way, even when refused).
        `here` (from a thread that may block, never the event loop): when the image is alone (every
        worker idle, nothing queued or on its way, no batching wait) run its call on this thread, as
        a worker would, and call `done` before returning: no hand-over to a worker thread."""
        with self._ready:
            if expected:
                self._coming -= 1
            run_here = here and self._alone()
            if run_here:
                self._idle -= 1  # this thread is a worker for one call
            elif len(self._queue) >= self._max_queue:
                raise OverloadedError(f"{len(self._queue)} images are waiting for inference; retry later")
            else:
                self._queue.append((image, done, time.monotonic()))
                self._ready.notify()
        if run_here:
            self._run([(image, done, time.monotonic())], crowded=False)

    def run_alone(
        self, make: Callable[[], np.ndarray], defer: Callable[..., object] | None = None
    ) -> np.ndarray | None:
        """When no image is queued, on its way or running (and no batching wait), take a worker's
        place, build the image with `make()` and score it on this thread: its (L,) scores, or the
        error of `make` or of the call raised here. Otherwise None, `make` not called: `put` it.

        For the event loop: nothing else can start on this batcher while the loop is busy, and the
        call alone has every core (the wide session) anyway; at concurrency 1 the round trip through
        a thread it saves cost 0.18-0.29 ms of a ~10 ms answer on a 2-core VM (README, *Measured here*).
        `defer(f, *args)` runs the batch observer later (the loop's `call_soon`: once the answer is
        out; Prometheus' multiprocess histograms took ~0.1 ms in front of it); None: now.
        """
        with self._ready:
            if not self._alone():
                return None
            self._idle -= 1
        try:
            image = make()
        except BaseException:
            self._release()
            raise
        scores, error, seconds = self._score([image], crowded=False)
        if error is not None:
            raise error
        if self._on_batch is not None and defer is not None:
            defer(self._on_batch, 1, seconds)
        elif self._on_batch is not None:
            self._on_batch(1, seconds)
        return scores[0]

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """Score one image from asyncio code; returns its (L,) scores."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.put(image, lambda scores, error: loop.call_soon_threadsafe(settle, future, scores, error))
        return await future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def _take(self) -> tuple[list[tuple[np.ndarray, Done, float]], bool] | None:
        """The next batch for a worker, and whether it is crowded; None when closed."""
        with self._ready:
            while True:
                if self._closed:
                    return None
                if self._queue and self._idle > 0:  # 0: a `put(here=True)` holds the last place
                    wait = self._queue[0][2] + self._max_wait - time.monotonic()
                    if len(self._queue) >= self._max_batch or wait <= 0:
                        break
                    self._ready.wait(wait)
                else:
                    self._ready.wait()
            # Share the queue among the idle workers: one worker taking everything would leave
            # the others idle while it works through a big batch.
            take = min(self._max_batch, -(-len(self._queue) // self._idle))
            jobs = [self._queue.popleft() for _ in range(min(take, len(self._queue)))]
            crowded = self._workers > 1 and (
                self._idle < self._workers or bool(self._queue) or self._coming > 0
            )
            self._idle -= 1
            return jobs, crowded

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            self._run(*taken)

    def _alone(self) -> bool:
        """No image queued, on its way or running, no batching wait (call holding `_ready`)."""
        return (
            self._max_wait == 0
            and not self._closed
            and not self._queue
            and self._coming == 0
            and self._idle == self._workers
        )

    def _run(self, jobs: list[tuple[np.ndarray, Done, float]], crowded: bool) -> None:
        """One onnxruntime call for `jobs`, by a thread that took a worker's place (`_idle` - 1)."""
        scores, error, seconds = self._score([job[0] for job in jobs], crowded)
        for i, (_, done, _) in enumerate(jobs):
            done(None if scores is None else scores[i], error)
        if error is None and self._on_batch is not None:  # observed once the answers are on their way
            self._on_batch(len(jobs), seconds)

    def _score(
        self, images: list[np.ndarray], crowded: bool
    ) -> tuple[np.ndarray | None, Exception | None, float]:
        """One onnxruntime call: (scores, error, seconds); gives the caller's worker place back first."""
        infer = self._infer_crowded if crowded else self._infer
        start = time.perf_counter()
        try:
            batch = images[0][None] if len(images) == 1 else np.stack(images)  # one image: a view, no copy
            scores, error = infer(batch), None
        except Exception as exc:  # handed to every waiting request
            scores, error = None, exc
        seconds = time.perf_counter() - start
        self._release()
        return scores, error, seconds

    def _release(self) -> None:
        with self._ready:
            self._idle += 1
            if self._idle == 1 and self._queue:  # a worker may wait for this place (`_take`)
                self._ready.notify()


def settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    """Complete `future` unless its request was cancelled meanwhile (call on the loop)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
