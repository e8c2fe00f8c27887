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

from service.errors import ManifestError, RequestError
from service.manifest import WHICH_MODELS, Manifest, ModelEntry
from service.server.graph import Graph
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
    # A call on several threads spins its pool threads between parallel sections, and stops them
    # the moment it returns (`force_spinning_stop`): without spinning every section woke a
    # sleeping thread through a futex, ~5 % of the CPU in the kernel; on a 2-core AVX-512 VM, batch
    # 1, 256 px, decode + call in a loop: int8 5.73 -> 4.72 ms a call, fp32 10.7 -> 8.8, and with a
    # 2 ms pause between calls (as between HTTP requests) 7.18 -> 5.78 (int8). Spinning that went
    # on after the call (onnxruntime's default) stole the cores that decode images beside it:
    # batch-1 inference took 11.6 ms with it vs 5.2 ms without while decode threads ran.
    # A 1-thread session has no pool threads to spin.
    spin = "1" if intra_op_threads > 1 else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.force_spinning_stop", "1")
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


def served_precisions(setting: str, entry: ModelEntry, *, gpu: bool) -> tuple[tuple[str, ...], str | None]:
    """The precisions one model (best or last) is served at, its default first, and a note on why
    that differs from what `setting` (MANYLABEL_PRECISION) asks for, when it does.

    auto: int8 and fp32 on CPU when the model has a kept int8 variant (int8 the default), else fp32;
    fp32 on a GPU. fp32: fp32 only. int8: int8 only, or fp32 for a model without a kept int8 variant.
    """
    missing = no_int8(entry)
    if setting == "fp32":
        return ("fp32",), None
    if setting == "int8" and missing:
        return ("fp32",), f"MANYLABEL_PRECISION=int8 but {missing}: serving fp32"
    if setting == "int8":
        return ("int8",), None
    if missing:
        return ("fp32",), missing if entry.variants else None  # a pre-int8 model: nothing to say
    if gpu:
        return ("fp32",), "auto serves fp32 on CUDA: int8 and fp16 are not measured on a GPU (int8: set it)"
    return ("int8", "fp32"), None


def no_int8(entry: ModelEntry) -> str | None:
    """Why the model has no int8 graph to serve; None when it has one."""
    int8 = entry.variants.get("int8")
    if int8 is None:
        return "the model has no int8 variant; `manylabel quantize` makes one for a model trained before int8"
    return None if int8.kept else f"its int8 variant was not kept: {int8.reason}"


class ModelRuntime:
    """The sessions of one model, best and last at each precision served, checked against its manifest.

    Only the precisions a request can ask for are opened (`served_precisions`): at most four graphs
    (best and last, int8 and fp32), ~4x Lite0's weights and arenas, well inside a 3 GiB replica. On
    the CPU with several inference workers, a graph whose calls overlap also opens a narrow session
    (`graph.Graph`: cores / workers intra-op threads), the first time they do.
    """

    def __init__(self, model_dir: Path, manifest: Manifest, settings: Settings) -> None:
        self.manifest = manifest
        self.input_name = manifest.preprocessing.input_name
        self.output_name = manifest.output_name
        self.requested_precision = settings.precision
        self.graphs: dict[tuple[str, str], Graph] = {}
        intra = settings.tuning(gpu=False).intra_op_threads  # does not depend on the provider
        # The first session probes the provider; it is one that every outcome serves (fp32, or int8
        # when pinned and present), so the probe is never an extra session.
        best = manifest.models["best"]
        probe = "int8" if settings.precision == "int8" and "int8" in best.precisions else "fp32"
        session, report = open_session(
            Path(model_dir) / best.file_for(probe), provider=settings.provider, intra_op_threads=intra
        )
        self.provider = report
        self.tuning: Tuning = settings.tuning(gpu=report.gpu)
        self.precisions: dict[str, tuple[str, ...]] = {}
        self.precision_notes: dict[str, str] = {}
        for which in WHICH_MODELS:
            entry = manifest.models[which]
            served, note = served_precisions(settings.precision, entry, gpu=report.gpu)
            self.precisions[which] = served
            if note:
                self.precision_notes[which] = note
            for precision in served:
                if (which, precision) == ("best", probe):
                    opened = session
                else:  # the probe's outcome: no second CUDA probe
                    path = Path(model_dir) / entry.file_for(precision)
                    provider = "cuda" if report.gpu else "cpu"
                    opened, _ = open_session(path, provider=provider, intra_op_threads=intra)
                self._check_io(f"{which} {precision}", opened)
                self.graphs[(which, precision)] = Graph(
                    opened,
                    self._narrow_opener(model_dir, entry.file_for(precision)),
                    name=f"{which}-{precision}",
                )
        logger.info(
            "model %s: onnxruntime provider %s (requested %s)%s; precisions %s%s",
            manifest.name,
            report.active,
            report.requested,
            f": {report.note}" if report.note else "",
            self.precisions,
            f" ({'; '.join(self.precision_notes.values())})" if self.precision_notes else "",
        )

    def precision(self, which: str, asked: str | None = None) -> str:
        """The precision a request runs at: `asked`, else the model's default. RequestError (400,
        field precision) naming why when `asked` is not served."""
        served = self.precisions[which]
        if asked is None or asked in served:
            return asked or served[0]
        if asked == "int8" and (missing := no_int8(self.manifest.models[which])):
            why = missing
        elif self.requested_precision != "auto":
            why = f"this service runs MANYLABEL_PRECISION={self.requested_precision}"
        else:
            why = self.precision_notes.get(which, "not opened")
        raise RequestError(
            f"precision: {asked!r} is not served for the {which} model of {self.manifest.name} ({why}); "
            f"served: {', '.join(served)}",
            field="precision",
        )

    def precision_summary(self) -> dict:
        """GET /model's `precision`: the setting, each model's default, and why, where it differs."""
        return {
            "requested": self.requested_precision,
            "default": {which: served[0] for which, served in self.precisions.items()},
            "notes": self.precision_notes,
        }

    def _narrow_opener(self, model_dir: Path, file: str):
        """How to open a graph's narrow session; None where it would be the wide one (a GPU, one
        worker, or as many workers as intra-op threads)."""
        tuning = self.tuning
        if self.provider.gpu or tuning.crowded_intra_op_threads >= tuning.intra_op_threads:
            return None
        path, threads = Path(model_dir) / file, tuning.crowded_intra_op_threads
        return lambda: open_session(path, provider="cpu", intra_op_threads=threads)[0]

    def _check_io(self, which: str, session: ort.InferenceSession) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ManifestError(
                f"{which} model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest "
                f"expects input {self.input_name!r} and output {self.output_name!r}: re-export the model"
            )

    def run(
        self, which: str, batch: np.ndarray, precision: str | None = None, *, crowded: bool = False
    ) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, L) float32 scores, at `precision` (default: the model's).
        `crowded`: other inference calls overlap this one (the narrow session, once open)."""
        graph = self.graphs[(which, precision or self.precisions[which][0])]
        (scores,) = graph.run([self.output_name], {self.input_name: batch}, crowded=crowded)
        return scores

    def warm_up(self) -> None:
        """One inference per session, checking the output shape against the labels."""
        size = self.manifest.preprocessing.image_size
        blank = np.zeros((1, size, size, 3), dtype=np.uint8)
        for which, precision in self.graphs:
            scores = self.run(which, blank, precision)
            if scores.shape != (1, len(self.manifest.labels)):
                raise ManifestError(
                    f"{which} model ({precision}) returns scores of shape {scores.shape} for one image; the "
                    f"manifest has {len(self.manifest.labels)} labels: model and manifest do not match"
                )
