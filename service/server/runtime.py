"""onnxruntime sessions for a stored model: provider choice (CUDA when it really works), I/O checks.

Provider choice: CUDA when onnxruntime offers it *and* it initialises. onnxruntime-gpu offers
CUDAExecutionProvider even where the CUDA/cuDNN libraries are missing and then quietly runs on the
CPU; `session.get_providers()` tells the truth, so we check it and say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import ManifestError
from service.manifest import WHICH_MODELS, Manifest
from service.server.settings import Settings, Tuning

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


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
