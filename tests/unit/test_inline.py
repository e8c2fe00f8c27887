"""A request alone in the worker: one small JPEG decoded and scored on the event loop, no thread
hand-over (`Batcher.run_alone`, `Predictor.predict_async(alone=...)`, `Reservation.alone`)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import RequestError
from service.server import predictor as predictor_module
from service.server.batcher import Batcher
from service.server.http.budget import ByteBudget, Reservation
from service.server.http.clients import RecentClients
from service.server.http.uploads import InputFile
from service.server.predictor import Predictor
from service.server.settings import Settings
from service.store import StoredModel

IMAGE = np.zeros((2, 2, 3), np.uint8)


class Model:
    """An infer callable recording the threads it ran on; raises when `error` is set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.threads: list[int] = []
        self.error = error

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if self.error is not None:
            raise self.error
        return np.full((len(batch), 2), 0.25, np.float32)


def test_an_image_alone_is_made_and_scored_on_the_calling_thread() -> None:
    model, observed = Model(), []
    batcher = Batcher(model, workers=2, max_batch_size=4, on_batch=lambda n, s: observed.append(n))
    made: list[int] = []

    def make() -> np.ndarray:
        made.append(threading.get_ident())
        return IMAGE

    scores = batcher.run_alone(make)
    assert scores is not None and scores.tolist() == [0.25, 0.25]  # one image's row
    assert made == model.threads == [threading.get_ident()] and observed == [1]
    assert batcher._idle == 2  # its place given back
    batcher.close()


@pytest.mark.parametrize("busy", ["queued", "on its way", "running", "batching wait", "closed"])
def test_an_image_not_alone_is_left_to_the_caller(busy: str) -> None:
    release = threading.Event()
    model = Model()
    wait = 50 if busy == "batching wait" else 0
    batcher = Batcher(
        lambda b: release.wait(5) and model(b), workers=1, max_batch_size=4, max_latency_ms=wait
    )
    if busy in ("queued", "running"):
        batcher.put(IMAGE, lambda s, e: None)
        while batcher._idle:  # the one worker took it and holds its call
            threading.Event().wait(0.01)
        if busy == "queued":
            batcher.put(IMAGE, lambda s, e: None)
    elif busy == "on its way":
        batcher.expect(1)
    elif busy == "closed":
        batcher.close()
    called = []
    assert batcher.run_alone(lambda: called.append(1) or IMAGE) is None
    assert called == []  # nothing decoded: the caller puts the image the usual way
    release.set()
    batcher.close()


@pytest.mark.parametrize("where", ["make", "infer"])
def test_a_failure_alone_is_raised_and_gives_the_place_back(where: str) -> None:
    model = Model(RuntimeError("onnxruntime failed") if where == "infer" else None)
    batcher = Batcher(model, workers=1, max_batch_size=4)

    def make() -> np.ndarray:
        if where == "make":
            raise RequestError("images: 'bad.jpg' is not an image", field="images", file="bad.jpg")
        return IMAGE

    with pytest.raises(RequestError if where == "make" else RuntimeError):
        batcher.run_alone(make)
    assert batcher._idle == 1  # a lost place would make the one worker wait forever
    model.error = None
    assert asyncio.run(batcher.submit(IMAGE)).shape == (2,)  # the worker still serves
    batcher.close()


def test_a_reservation_is_alone_while_no_other_request_holds_one() -> None:
    budget = ByteBudget(1 << 20)
    first = Reservation(budget, sole_client=True)
    assert first.alone()
    second = Reservation(budget, sole_client=True)
    assert not first.alone() and not second.alone()
    second.close()
    second.close()  # closing twice counts once
    assert first.alone() and budget.holders == 1
    first.close()
    assert budget.holders == 0 and not first.alone()  # a closed request is not "in progress"
    assert not Reservation(None, sole_client=True).alone()  # no budget, no knowledge: never inline
    assert not Reservation(budget).alone()  # another client sent a request lately


def test_a_client_is_sole_until_another_connection_sends_within_the_window() -> None:
    now = [0.0]
    clients = RecentClients(window_s=1.0, clock=lambda: now[0])
    a, b = ("127.0.0.1", 5001), ("127.0.0.1", 5002)
    assert clients.sole(a) and clients.sole(a)
    now[0] = 0.5
    assert not clients.sole(b)  # two connections sending: concurrent clients, a proxy's pool
    now[0] = 1.2
    assert not clients.sole(a)  # b sent 0.7 s ago
    now[0] = 1.6
    assert clients.sole(a)  # b has been quiet for over a second
    assert not clients.sole(None)  # no peer address (a unix socket): unknown, never sole


# --- Predictor.predict_async ----------------------------------------------------------------------


def _predictor(tmp_path: Path) -> Predictor:
    from support.tinymodel import tiny_model

    manifest = tiny_model(tmp_path, ["a", "b", "c"], name="inline-test")
    stored = StoredModel(tag="inline-test:v1", path=tmp_path, manifest=manifest)
    return Predictor(stored, Settings(provider="cpu", precision="fp32", max_latency_ms=0))


def _image(fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _decoded_on(predictor: Predictor, files: list[InputFile], alone: Callable[[], bool] | None) -> tuple:
    """(whether decoding ran on the event loop's thread, the scores) of one predict_async call."""
    threads: list[int] = []
    decode = predictor.decode

    def recording(file: InputFile) -> np.ndarray:
        threads.append(threading.get_ident())
        return decode(file)

    predictor.decode = recording  # type: ignore[method-assign]

    async def main() -> tuple:
        result = await predictor.predict_async(files, alone=alone)
        return threads == [threading.get_ident()], [image.scores for image in result.images]

    try:
        return asyncio.run(main())
    finally:
        del predictor.decode


def test_one_small_jpeg_of_a_request_alone_is_scored_on_the_event_loop(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path)
    jpeg = [InputFile(name="a.jpg", data=_image())]
    inline, scores = _decoded_on(predictor, jpeg, alone=lambda: True)
    assert inline
    assert _decoded_on(predictor, jpeg, alone=None) == (False, scores)  # same numbers off the loop
    predictor.close()


def test_the_batch_of_a_request_alone_is_observed_after_the_answer_is_out(tmp_path: Path) -> None:
    from support.tinymodel import tiny_model

    observed: list[tuple[str, int]] = []
    manifest = tiny_model(tmp_path, ["a", "b", "c"], name="inline-test")
    stored = StoredModel(tag="inline-test:v1", path=tmp_path, manifest=manifest)
    settings = Settings(provider="cpu", precision="fp32", max_latency_ms=0)
    predictor = Predictor(stored, settings, on_batch=lambda which, n, s: observed.append((which, n)))

    async def main() -> list[list[tuple[str, int]]]:
        await predictor.predict_async([InputFile(name="a.jpg", data=_image())], alone=lambda: True)
        answered = list(observed)  # the request's task goes on to send its answer before it yields
        await asyncio.sleep(0)
        return [answered, list(observed)]

    assert asyncio.run(main()) == [[], [("best", 1)]]
    predictor.close()


def test_other_requests_go_through_the_decode_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = _predictor(tmp_path)
    jpeg = InputFile(name="a.jpg", data=_image())
    assert not _decoded_on(predictor, [jpeg], alone=lambda: False)[0]  # another request in progress
    assert not _decoded_on(predictor, [InputFile(name="a.png", data=_image("PNG"))], alone=lambda: True)[0]
    inline, _ = _decoded_on(predictor, [jpeg, jpeg], alone=lambda: True)  # two images: both off the loop
    assert not inline
    answers = iter([True, False])  # a request started during the loop turn given before the decision
    assert not _decoded_on(predictor, [jpeg], alone=lambda: next(answers))[0]
    monkeypatch.setattr(predictor_module, "INLINE_MAX_BYTES", len(jpeg.data) - 1)
    assert not _decoded_on(predictor, [jpeg], alone=lambda: True)[0]  # a big JPEG: decoding takes long
    predictor.close()


def test_a_bad_jpeg_alone_is_a_400_naming_it_and_the_batcher_stays_free(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path)
    broken = InputFile(name="broken.jpg", data=_image()[:40])  # starts as a JPEG, then ends

    async def main() -> None:
        with pytest.raises(RequestError) as caught:
            await predictor.predict_async([broken], alone=lambda: True)
        assert caught.value.status == 400 and caught.value.file == "broken.jpg"

    asyncio.run(main())
    batcher = predictor._batchers[("best", "fp32")]
    assert batcher._idle == batcher._workers
    assert _decoded_on(predictor, [InputFile(name="a.jpg", data=_image())], alone=lambda: True)[0]
    predictor.close()


def test_each_batcher_takes_the_batch_size_of_its_precision(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path)  # fp32 graphs, MANYLABEL_MAX_BATCH_SIZE unset: one image per call
    try:
        sizes = {key: batcher._max_batch for key, batcher in predictor._batchers.items()}
        assert sizes == {("best", "fp32"): 1, ("last", "fp32"): 1}
        assert predictor.summary()["serving"]["int8_max_batch_size"] == 4
    finally:
        predictor.close()
