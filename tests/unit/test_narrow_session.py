"""The narrow session of a graph (graph.py, runtime.py): opened on the first crowded call, never where
it would not differ, the CPU defaults that make calls crowded, and a process ending while it opens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.manifest import Manifest
from service.server.runtime import ModelRuntime
from service.server.settings import Settings


def _model(folder: Path) -> Manifest:
    from support.tinymodel import tiny_model

    return tiny_model(folder, ["a", "b"], name="crowding-test")


def test_the_narrow_session_opens_on_the_first_crowded_call(tmp_path: Path) -> None:
    settings = Settings(provider="cpu", intra_op_threads=2, inference_workers=2)
    rt = ModelRuntime(tmp_path, _model(tmp_path), settings)
    assert rt.tuning.crowded_intra_op_threads == 1
    graph = rt.graphs[("best", "fp32")]
    assert graph.narrow is None  # nothing opened before calls overlap
    batch = np.full((2, 16, 16, 3), 90, np.uint8)
    alone = rt.run("best", batch)
    assert not graph.wait_narrow(0) and graph.narrow is None  # a lone call opens nothing
    first = rt.run("best", batch, crowded=True)  # served by the wide session while narrow opens
    assert graph.wait_narrow(10)
    assert graph.wide.get_session_options().intra_op_num_threads == 2
    assert graph.narrow.get_session_options().intra_op_num_threads == 1
    # The wide call spins its pool threads while it runs and stops them when it returns; the
    # narrow one has no pool threads.
    wide, narrow = graph.wide.get_session_options(), graph.narrow.get_session_options()
    assert wide.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert wide.get_session_config_entry("session.force_spinning_stop") == "1"
    assert narrow.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_allclose(rt.run("best", batch, crowded=True), alone, rtol=1e-6)
    np.testing.assert_array_equal(first, alone)
    assert rt.graphs[("last", "fp32")].narrow is None  # only graphs whose calls overlapped


@pytest.mark.parametrize(
    "settings",
    [
        Settings(provider="cpu", intra_op_threads=2, inference_workers=1),  # calls never overlap
        Settings(provider="cpu", intra_op_threads=1),  # a narrow session would be the wide one
    ],
)
def test_no_narrow_session_where_it_would_not_differ(tmp_path: Path, settings: Settings) -> None:
    rt = ModelRuntime(tmp_path, _model(tmp_path), settings)
    rt.run("best", np.zeros((1, 16, 16, 3), np.uint8), crowded=True)
    assert not rt.graphs[("best", "fp32")].wait_narrow(1)


def test_cpu_defaults_run_a_call_per_intra_op_thread() -> None:
    cpu = Settings(intra_op_threads=4).tuning(gpu=False)
    assert (cpu.inference_workers, cpu.crowded_intra_op_threads) == (4, 1)
    assert (cpu.batch_size("fp32"), cpu.batch_size("int8")) == (1, 4)  # fp32 activations outgrow caches
    gpu = Settings(intra_op_threads=4).tuning(gpu=True)
    assert (gpu.inference_workers, gpu.crowded_intra_op_threads) == (1, 4)
    assert (gpu.batch_size("fp32"), gpu.batch_size("int8")) == (64, 64)
    two = Settings(intra_op_threads=8, inference_workers=2).tuning(gpu=False)
    assert two.crowded_intra_op_threads == 4  # two overlapping calls share the eight threads


EXIT_WHILE_OPENING = """
import sys
import threading
import onnxruntime as ort
from service.server.graph import Graph
from service.server.runtime import session_options

def open_session():
    return ort.InferenceSession(sys.argv[1], session_options(1), providers=["CPUExecutionProvider"])

graph = Graph(open_session(), open_session, name="exit-test")
# started from a daemon thread, as the batcher's workers are; the script ends while it opens
caller = threading.Thread(target=graph.session, kwargs={"crowded": True}, daemon=True)
caller.start()
caller.join()
"""


def test_a_process_may_end_while_the_narrow_session_opens(tmp_path: Path) -> None:
    from support.tinymodel import tiny_onnx

    tiny_onnx(tmp_path / "m.onnx", seed=1, n_labels=2, size=16)
    for _ in range(3):  # as a daemon thread, the opening aborted the interpreter's exit 3 times in 3
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_OPENING, str(tmp_path / "m.onnx")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
