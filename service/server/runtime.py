"""onnxruntime sessions for a stored model, an adaptive batcher in front of them, and thresholds.

Provider choice: CUDA when onnxruntime offers it *and* it initialises. onnxruntime-gpu offers
CUDAExecutionProvider even where the CUDA/cuDNN libraries are missing and then quietly runs on the
CPU; `session.get_providers()` tells the truth, so we check it and say so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.custom_thresholds import check_threshold
from service.errors import ManifestError, ThresholdError
from service.manifest import WHICH_MODELS, Manifest
from service.settings import Settings, Tuning

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OverloadedError(RuntimeError):
    """More images wait for inference than the queue allows; the client should retry later."""


@dataclass(frozen=True)
class ProviderReport:
    requested: str  # auto | cpu | cuda
    active: str  # the provider onnxruntime really uses
    note: str | None = None  # why it is not the one asked for, when it is not

    @property
    def gpu(self) -> bool:
        return self.active == CUDA


def gpu_visible() -> bool:
    """Cheap check for an NVIDIA device, so `auto` does not probe CUDA on CPU-only machines."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    # Spinning threads steal the cores that decode images beside inference: measured here,
    # batch-1 inference took 11.6 ms with spinning vs 5.2 ms without while decode threads ran.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def open_session(
    path: Path, *, provider: str, intra_op_threads: int
) -> tuple[ort.InferenceSession, ProviderReport]:
    """Open one session on the requested provider and report the one really in use.

    `provider="cuda"` fails loudly when CUDA does not initialise; `auto` falls back to CPU and
    says why in the report's note.
    """
    available = ort.get_available_providers()
    want_cuda = provider == "cuda" or (provider == "auto" and CUDA in available and gpu_visible())
    note = None
    if provider == "auto" and CUDA in available and not want_cuda:
        note = "no NVIDIA GPU visible; running on CPU"
    if provider == "cuda" and CUDA not in available:
        raise RuntimeError(
            f"MANYLABEL_PROVIDER=cuda but this onnxruntime offers only {available}: install "
            "onnxruntime-gpu (never beside plain onnxruntime), or set MANYLABEL_PROVIDER=auto"
        )
    providers = [CUDA, CPU] if want_cuda else [CPU]
    session = ort.InferenceSession(
        str(path), sess_options=session_options(intra_op_threads), providers=providers
    )
    active = session.get_providers()[0]
    if want_cuda and active != CUDA:
        note = (
            "CUDAExecutionProvider is offered but did not initialise (usually missing CUDA or cuDNN "
            "libraries, see onnxruntime's message above); onnxruntime fell back to CPU"
        )
        if provider == "cuda":
            raise RuntimeError(f"MANYLABEL_PROVIDER=cuda: {note}. Fix the CUDA install or use auto/cpu")
        logger.warning("%s", note)
    return session, ProviderReport(requested=provider, active=active, note=note)


class ModelRuntime:
    """The best and last sessions of one model, checked against its manifest."""

    def __init__(self, model_dir: Path, manifest: Manifest, settings: Settings) -> None:
        self.manifest = manifest
        self.input_name = manifest.preprocessing.input_name
        self.output_name = manifest.output_name
        self.sessions: dict[str, ort.InferenceSession] = {}
        intra = settings.tuning(gpu=False).intra_op_threads  # does not depend on the provider
        report: ProviderReport | None = None
        for which in WHICH_MODELS:
            path = Path(model_dir) / manifest.models[which].file
            # The second session reuses the first one's outcome: no second CUDA probe.
            provider = settings.provider if report is None else ("cuda" if report.gpu else "cpu")
            session, opened = open_session(path, provider=provider, intra_op_threads=intra)
            report = report or opened
            self._check_io(which, session)
            self.sessions[which] = session
        assert report is not None
        self.provider = report
        self.tuning: Tuning = settings.tuning(gpu=report.gpu)
        logger.info(
            "model %s: onnxruntime provider %s (requested %s)%s",
            manifest.name,
            report.active,
            report.requested,
            f": {report.note}" if report.note else "",
        )

    def _check_io(self, which: str, session: ort.InferenceSession) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ManifestError(
                f"{which} model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest "
                f"expects input {self.input_name!r} and output {self.output_name!r}: re-export the model"
            )

    def run(self, which: str, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, L) float32 scores."""
        (scores,) = self.sessions[which].run([self.output_name], {self.input_name: batch})
        return scores

    def warm_up(self) -> None:
        """One inference per session, checking the output shape against the labels."""
        size = self.manifest.preprocessing.image_size
        blank = np.zeros((1, size, size, 3), dtype=np.uint8)
        for which in WHICH_MODELS:
            scores = self.run(which, blank)
            if scores.shape != (1, len(self.manifest.labels)):
                raise ManifestError(
                    f"{which} model returns scores of shape {scores.shape} for one image; the manifest "
                    f"has {len(self.manifest.labels)} labels: model and manifest do not belong together"
                )


Done = Callable[[np.ndarray | None, BaseException | None], None]  # (scores, error), from a worker thread


class Batcher:
    """Adaptive batching of single images into onnxruntime calls, on worker threads.

    Decode threads `put` images straight into the queue and `workers` inference threads take them,
    so an image costs the event loop one wake-up (shared by its whole batch), not one per stage.
    Greedy: an idle worker takes its share of what is queued (up to `max_batch_size`) at once;
    while every worker is busy new images queue up, so batches grow with the load and an idle
    service adds no latency. With `max_latency_ms` > 0 a worker waits up to that long for more
    images while the batch is not full (worth it on a GPU). Answers "overloaded" only when more
    than `max_queue` images wait, never because of latency.
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
    ) -> None:
        self._infer = infer
        self._max_batch = max_batch_size
        self._max_wait = max_latency_ms / 1000.0
        self._max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[tuple[np.ndarray, Done, float]] = deque()
        self._ready = threading.Condition()
        self._idle = workers
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, image: np.ndarray, done: Done) -> None:
        """Queue one (S, S, 3) image; `done(scores, error)` is called from a worker thread."""
        with self._ready:
            if len(self._queue) >= self._max_queue:
                raise OverloadedError(f"{len(self._queue)} images are waiting for inference; retry later")
            self._queue.append((image, done, time.monotonic()))
            self._ready.notify()

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

    def _take(self) -> list[tuple[np.ndarray, Done, float]] | None:
        with self._ready:
            while True:
                if self._closed:
                    return None
                if self._queue:
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
            self._idle -= 1
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            start = time.perf_counter()
            try:
                scores, error = self._infer(np.stack([job[0] for job in jobs])), None
            except Exception as exc:  # handed to every waiting request
                scores, error = None, exc
            with self._ready:
                self._idle += 1
            if error is None and self._on_batch is not None:
                self._on_batch(len(jobs), time.perf_counter() - start)
            for i, (_, done, _) in enumerate(jobs):
                done(None if scores is None else scores[i], error)


def settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    """Complete `future` unless its request was cancelled meanwhile (call on the loop)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- thresholds ---------------------------------------------------------------------------------


def resolve_thresholds(
    labels: Sequence[str],
    base: Sequence[float],
    *,
    threshold: float | None = None,
    overrides: Mapping[str, float] | None = None,
) -> list[float]:
    """The per-label thresholds a request uses.

    `base` (the manifest's, aligned with `labels`), replaced for every label by `threshold` when
    given, then by `overrides` for the labels it names. Raises ThresholdError naming the bad entry.
    """
    values = list(base)
    if threshold is not None:
        values = [check_threshold("threshold", threshold)] * len(labels)
    if overrides:
        index = {label: i for i, label in enumerate(labels)}
        for label, value in overrides.items():
            if label not in index:
                raise ThresholdError(
                    f"thresholds: unknown label {label!r}; the model's labels are {list(labels)}"
                )
            values[index[label]] = check_threshold(f"thresholds[{label!r}]", value)
    return values


def apply_thresholds(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N, L) scores -> (N, L) bool: a label is predicted when its score >= its threshold."""
    # Compared in float64, as a client reading the JSON scores and thresholds would.
    return np.asarray(scores, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
