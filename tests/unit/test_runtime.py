"""runtime.py and settings.py: thresholds, the adaptive batcher, provider choice, settings from env."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import RequestError
from service.manifest import Backbone, Manifest, ModelEntry, Preprocessing, Variant, file_entry
from service.server.batcher import Batcher, OverloadedError
from service.server.runtime import CPU, CUDA, ModelRuntime, ProviderReport, open_session, served_precisions
from service.server.settings import Settings, SettingsError
from service.thresholds import apply_thresholds

LABELS = ["a", "b", "c"]

# --- thresholds ----------------------------------------------------------------------------------


def test_apply_thresholds_is_at_or_above() -> None:
    scores = np.array([[0.3, 0.5, 0.7], [0.29999998, 0.0, 1.0]], dtype=np.float32)
    assert apply_thresholds(scores, [float(np.float32(0.3)), 0.5, 1.0]).tolist() == [
        [True, True, False],
        [False, False, True],
    ]


def test_apply_thresholds_compares_like_a_json_client() -> None:
    # float32(0.1) is just above 0.1: a client comparing the JSON numbers sees score >= 0.1.
    score = np.float32(0.1)
    assert apply_thresholds(np.array([[score]]), [0.1]).tolist() == [[float(score) >= 0.1]]


# --- batcher -------------------------------------------------------------------------------------


class SlowModel:
    """Sums each image; records the batch sizes; the first call waits until released."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        self.sizes.append(len(batch))
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True).astype(np.float32)


def run(coro):
    return asyncio.run(coro)


def test_batcher_groups_images_that_wait() -> None:
    model = SlowModel()
    batcher = Batcher(model, workers=1, max_batch_size=4)

    async def main() -> list:
        first = asyncio.ensure_future(batcher.submit(np.full((2, 2, 3), 1, np.uint8)))
        await asyncio.sleep(0.05)  # the first image is in the model; the next six queue up
        rest = [asyncio.ensure_future(batcher.submit(np.full((2, 2, 3), k, np.uint8))) for k in range(2, 8)]
        model.release.set()
        return [await first] + [await r for r in rest]

    results = run(main())
    assert [float(r[0]) for r in results] == [12.0 * k for k in range(1, 8)]
    assert model.sizes == [1, 4, 2]  # greedy, capped at max_batch_size
    batcher.close()


def test_batcher_shares_the_queue_among_idle_workers() -> None:
    model = SlowModel()
    batcher = Batcher(model, workers=2, max_batch_size=16)

    async def main() -> None:
        jobs = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 3), np.uint8))) for _ in range(6)]
        await asyncio.sleep(0)  # nothing dispatched until the loop runs the submissions
        model.release.set()
        await asyncio.gather(*jobs)

    run(main())
    assert sum(model.sizes) == 6 and max(model.sizes) <= 5


def test_batcher_waits_up_to_max_latency_for_batch_mates() -> None:
    model = SlowModel()
    model.release.set()
    batcher = Batcher(model, workers=1, max_batch_size=8, max_latency_ms=50)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 3), np.uint8)))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 3), np.uint8)))
        await asyncio.gather(first, second)

    run(main())
    assert model.sizes == [2]
    batcher.close()


def test_batcher_passes_model_errors_to_every_waiter() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime exploded")

    batcher = Batcher(broken, workers=1, max_batch_size=4)

    async def main() -> list:
        jobs = [batcher.submit(np.zeros((1, 1, 3), np.uint8)) for _ in range(3)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    batcher.close()


def test_batcher_refuses_when_the_queue_is_full() -> None:
    model = SlowModel()
    batcher = Batcher(model, workers=1, max_batch_size=1, max_queue=2)

    async def main() -> None:
        jobs = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 3), np.uint8)))]
        await asyncio.sleep(0.05)  # the first is in the model
        jobs += [asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 3), np.uint8))) for _ in range(2)]
        await asyncio.sleep(0.05)  # two queued
        with pytest.raises(OverloadedError, match="retry later"):
            await batcher.submit(np.zeros((1, 1, 3), np.uint8))
        model.release.set()
        await asyncio.gather(*jobs)

    run(main())
    batcher.close()


# --- provider ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identity_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["scores"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "identity.onnx"
    onnx.save(model, str(path))
    return path


def test_cpu_provider(identity_onnx: Path) -> None:
    session, report = open_session(identity_onnx, provider="cpu", intra_op_threads=1)
    assert report.active == CPU and report.note is None and not report.gpu
    assert session.get_providers() == [CPU]


def test_auto_reports_why_it_is_on_cpu(identity_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.server.runtime.gpu_visible", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    _, report = open_session(identity_onnx, provider="auto", intra_op_threads=1)
    assert report.active == CPU and report.note == "no NVIDIA GPU visible; running on CPU"


def test_cuda_that_silently_falls_back_is_detected(
    identity_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime-gpu (the project's runtime) offers CUDA even where it cannot initialise.
    assert CUDA in ort.get_available_providers()
    if _cuda_works(identity_onnx):  # a real GPU machine: auto must pick CUDA, no fall-back note
        _, report = open_session(identity_onnx, provider="auto", intra_op_threads=1)
        assert report.active == CUDA and report.gpu
        return
    # Without its libraries or a GPU it quietly runs on the CPU: we must notice.
    monkeypatch.setattr("service.server.runtime.gpu_visible", lambda: True)
    _, report = open_session(identity_onnx, provider="auto", intra_op_threads=1)
    assert report.active == CPU and "fell back to CPU" in report.note
    with pytest.raises(RuntimeError, match="MANYLABEL_PROVIDER=cuda: .*fell back to CPU"):
        open_session(identity_onnx, provider="cuda", intra_op_threads=1)


def _cuda_works(path: Path) -> bool:
    return CUDA in ort.InferenceSession(str(path), providers=[CUDA, CPU]).get_providers()


def test_cuda_requested_without_onnxruntime_gpu(identity_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
        open_session(identity_onnx, provider="cuda", intra_op_threads=1)


# --- settings ------------------------------------------------------------------------------------


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {"MANYLABEL_MODEL": "voc5", "MANYLABEL_MAX_BATCH_SIZE": "4", "MANYLABEL_VERSION": ""}
    )
    assert s.model == "voc5" and s.max_batch_size == 4 and s.version is None
    cpu, gpu = s.tuning(gpu=False), s.tuning(gpu=True)
    assert {t.batch_size(p) for t in (cpu, gpu) for p in ("fp32", "int8")} == {4}  # set: every graph
    assert cpu.max_latency_ms == 0 and gpu.max_latency_ms > 0 and gpu.inference_workers == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("MANYLABEL_PROVIDER", "tpu"), ("MANYLABEL_MAX_FILES", "0"), ("MANYLABEL_MAX_QUEUE", "x")],
)
def test_bad_settings_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{key}='{value}'"):
        Settings.from_env({key: value})


# --- precision -----------------------------------------------------------------------------------


def _entry(int8: Variant | None) -> ModelEntry:
    variants = {"int8": int8} if int8 else {}
    return ModelEntry(
        file="best.onnx", epoch=1, val_loss=0.1, thresholds=[0.5], threshold_source="oof", variants=variants
    )


KEPT = Variant(file="best.int8.onnx", kept=True)
DROPPED = Variant(kept=False, reason="it loses 0.0100 validation mAP against fp32")


@pytest.mark.parametrize(
    ("setting", "int8", "gpu", "served", "note"),
    [
        ("auto", KEPT, False, ("int8", "fp32"), None),  # CPU: int8 by default, fp32 on request
        ("auto", KEPT, True, ("fp32",), "auto serves fp32 on CUDA"),  # int8 / fp16 unmeasured on a GPU
        ("auto", None, False, ("fp32",), None),  # a model from before int8: nothing to say
        ("auto", DROPPED, False, ("fp32",), "its int8 variant was not kept: it loses 0.0100"),
        ("fp32", KEPT, False, ("fp32",), None),
        ("int8", KEPT, False, ("int8",), None),
        ("int8", KEPT, True, ("int8",), None),  # asked for explicitly: int8 on the GPU too
        ("int8", None, False, ("fp32",), "MANYLABEL_PRECISION=int8 but the model has no int8 variant"),
        ("int8", DROPPED, True, ("fp32",), "MANYLABEL_PRECISION=int8 but its int8 variant was not kept"),
    ],
)
def test_served_precisions(
    setting: str, int8: Variant | None, gpu: bool, served: tuple[str, ...], note: str | None
) -> None:
    got, why = served_precisions(setting, _entry(int8), gpu=gpu)
    assert got == served
    assert (why is None) if note is None else (why is not None and why.startswith(note))


def _int8_model(folder: Path) -> Manifest:
    """A tiny model whose 'int8' variants are other tiny graphs (the runtime only opens files)."""
    from support.tinymodel import tiny_onnx

    files = {"best.onnx": 1, "last.onnx": 2, "best.int8.onnx": 3, "last.int8.onnx": 4}
    for name, seed in files.items():
        tiny_onnx(folder / name, seed=seed, n_labels=len(LABELS), size=16)
    return Manifest(
        name="precision-test",
        labels=LABELS,
        backbone=Backbone(id="tiny", package="tests", feature_dim=3),
        preprocessing=Preprocessing(image_size=16),
        models={
            w: ModelEntry(
                file=f"{w}.onnx",
                epoch=1,
                val_loss=0.1,
                thresholds=[0.5] * 3,
                threshold_source="oof",
                variants={"int8": Variant(file=f"{w}.int8.onnx", kept=True)},
            )
            for w in ("best", "last")
        },
        files=[file_entry(folder, name) for name in files],
    )


def _fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """open_session as on a GPU machine: CPU sessions underneath (no GPU here), reported as CUDA.
    Returns the files opened, in order."""
    from service.server import runtime

    opened: list[str] = []
    real = runtime.open_session

    def fake(path: Path, *, provider: str, intra_op_threads: int) -> tuple:
        assert provider in ("auto", "cuda"), "after the probe, sessions must stay on the probed provider"
        session, _ = real(path, provider="cpu", intra_op_threads=intra_op_threads)
        opened.append(Path(path).name)
        return session, ProviderReport(requested=provider, active=CUDA)

    monkeypatch.setattr(runtime, "open_session", fake)
    return opened


def test_auto_on_cuda_opens_fp32_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked: this machine has no GPU. On CUDA, auto serves fp32 (int8 and fp16 are not measured there).
    opened = _fake_cuda(monkeypatch)
    rt = ModelRuntime(tmp_path, _int8_model(tmp_path), Settings(provider="auto"))
    assert rt.provider.gpu and opened == ["best.onnx", "last.onnx"]
    assert set(rt.graphs) == {("best", "fp32"), ("last", "fp32")}
    assert rt.precision_summary()["default"] == {"best": "fp32", "last": "fp32"}
    assert rt.tuning.max_batch_size == 64  # GPU tuning follows the probed provider
    with pytest.raises(RequestError, match="auto serves fp32 on CUDA") as info:
        rt.precision("best", "int8")
    assert info.value.field == "precision"


def test_int8_on_cuda_when_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _fake_cuda(monkeypatch)  # mocked GPU, as above
    rt = ModelRuntime(tmp_path, _int8_model(tmp_path), Settings(provider="cuda", precision="int8"))
    assert opened == ["best.int8.onnx", "last.int8.onnx"]  # the probe is an int8 session: no extra one
    assert set(rt.graphs) == {("best", "int8"), ("last", "int8")}


def test_auto_on_cpu_opens_int8_and_fp32(tmp_path: Path) -> None:
    rt = ModelRuntime(tmp_path, _int8_model(tmp_path), Settings(provider="cpu"))
    assert set(rt.graphs) == {(w, p) for w in ("best", "last") for p in ("int8", "fp32")}
    rt.warm_up()
    batch = np.full((1, 16, 16, 3), 200, np.uint8)
    assert rt.precision("best") == "int8" and rt.precision("best", "fp32") == "fp32"
    # each precision runs its own graph
    assert not np.array_equal(rt.run("best", batch), rt.run("best", batch, "fp32"))
    np.testing.assert_array_equal(rt.run("best", batch), rt.run("best", batch, "int8"))


def test_pinned_fp32_opens_and_serves_fp32_only(tmp_path: Path) -> None:
    rt = ModelRuntime(tmp_path, _int8_model(tmp_path), Settings(provider="cpu", precision="fp32"))
    assert set(rt.graphs) == {("best", "fp32"), ("last", "fp32")}
    with pytest.raises(
        RequestError, match=r"'int8' is not served .*MANYLABEL_PRECISION=fp32\); served: fp32"
    ):
        rt.precision("last", "int8")


def test_precision_setting_from_env() -> None:
    assert Settings.from_env({}).precision == "auto"
    assert Settings.from_env({"MANYLABEL_PRECISION": "int8"}).precision == "int8"
    with pytest.raises(SettingsError, match="MANYLABEL_PRECISION='fp16'"):
        Settings.from_env({"MANYLABEL_PRECISION": "fp16"})
