"""Overlapping inference calls on the CPU: which calls are crowded and which run on the putting thread
(batcher.py), images announced on their way (request_images.py). The narrow session opened for
crowded calls: test_narrow_session.py."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import RequestError
from service.server.batcher import Batcher
from service.server.http.uploads import InputFile
from service.server.request_images import RequestImages

IMAGE = np.zeros((2, 2, 3), np.uint8)


class Gate:
    """An infer callable that records its calls and blocks each one until `release` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(5)
        return np.zeros((len(batch), 1), np.float32)


def test_a_lone_call_runs_wide_and_a_call_beside_it_runs_crowded() -> None:
    wide, crowded = Gate(), Gate()
    batcher = Batcher(wide, infer_crowded=crowded, workers=2, max_batch_size=4)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(IMAGE))
        await asyncio.to_thread(wide.entered.wait, 5)  # the first call is running, alone
        second = asyncio.ensure_future(batcher.submit(IMAGE))
        await asyncio.to_thread(crowded.entered.wait, 5)  # the second one overlaps it
        wide.release.set()
        crowded.release.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert (wide.calls, crowded.calls) == (1, 1)
    batcher.close()


def test_images_on_their_way_make_a_call_crowded() -> None:
    wide, crowded = Gate(), Gate()
    wide.release.set()
    crowded.release.set()
    batcher = Batcher(wide, infer_crowded=crowded, workers=2, max_batch_size=4)

    async def main() -> None:
        batcher.expect(1)  # another image is decoding
        await batcher.submit(IMAGE)
        assert (wide.calls, crowded.calls) == (0, 1)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        # the announced image arrives: nothing is on its way any more, so its call runs alone
        batcher.put(IMAGE, lambda s, e: loop.call_soon_threadsafe(done.set_result, s), expected=True)
        await done
        assert (wide.calls, crowded.calls) == (1, 1)

    asyncio.run(main())
    batcher.close()


def test_one_worker_never_runs_crowded() -> None:
    wide, crowded = Gate(), Gate()
    wide.release.set()
    batcher = Batcher(wide, infer_crowded=crowded, workers=1, max_batch_size=4)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(IMAGE) for _ in range(6)))

    batcher.expect(3)
    asyncio.run(main())
    assert crowded.calls == 0 and wide.calls >= 2
    batcher.close()


class Recorder:
    """An infer callable that records the thread of each call and how many ran at once."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.threads: list[int] = []
        self.running = self.most = 0
        self.entered = threading.Event()
        self.release = release
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.threads.append(threading.get_ident())
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.set()
        if self.release is not None:
            assert self.release.wait(5)
        with self.lock:
            self.running -= 1
        return np.zeros((len(batch), 1), np.float32)


def test_an_image_alone_is_run_on_the_thread_that_puts_it() -> None:
    wide, crowded = Recorder(), Recorder()
    batcher = Batcher(wide, infer_crowded=crowded, workers=2, max_batch_size=4)
    answers: list = []
    batcher.put(IMAGE, lambda scores, error: answers.append((scores, error)), here=True)
    assert len(answers) == 1 and answers[0][1] is None  # done before put returned
    assert wide.threads == [threading.get_ident()] and crowded.threads == []
    batcher.close()


def test_an_image_not_alone_goes_to_a_worker() -> None:
    release = threading.Event()
    wide, crowded = Recorder(release), Recorder()
    batcher = Batcher(wide, infer_crowded=crowded, workers=2, max_batch_size=4)
    answered = threading.Event()
    runner = threading.Thread(target=batcher.put, args=(IMAGE, lambda s, e: None), kwargs={"here": True})
    runner.start()
    assert wide.entered.wait(5)  # the first image runs on `runner`
    batcher.put(IMAGE, lambda s, e: answered.set(), here=True)  # returns at once: queued
    assert answered.wait(5) and crowded.threads and crowded.threads[0] != threading.get_ident()
    release.set()
    runner.join(5)
    batcher.expect(1)  # an image on its way: not alone either
    batcher.put(IMAGE, lambda s, e: None, here=True)
    assert threading.get_ident() not in crowded.threads
    batcher.close()


def test_one_worker_waits_while_a_putting_thread_holds_its_place() -> None:
    release = threading.Event()
    model = Recorder(release)
    batcher = Batcher(model, workers=1, max_batch_size=4)
    answered = threading.Event()
    runner = threading.Thread(target=batcher.put, args=(IMAGE, lambda s, e: None), kwargs={"here": True})
    runner.start()
    assert model.entered.wait(5)
    batcher.put(IMAGE, lambda s, e: answered.set())
    assert not answered.wait(0.2)  # the worker does not overlap the call on `runner`
    release.set()
    assert answered.wait(5) and model.most == 1 and len(model.threads) == 2
    runner.join(5)
    batcher.close()


def test_batching_with_a_wait_never_runs_on_the_putting_thread() -> None:
    model = Recorder()
    batcher = Batcher(model, workers=2, max_batch_size=4, max_latency_ms=1)
    answered = threading.Event()
    batcher.put(IMAGE, lambda s, e: answered.set(), here=True)
    assert answered.wait(5) and model.threads != [threading.get_ident()]
    batcher.close()


def _request(batcher: Batcher, decode, names: list[str]) -> tuple[list, BaseException | None]:
    """One request_images.RequestImages over `names` with a stand-in predictor whose decode is `decode`."""
    pool = ThreadPoolExecutor(2)
    predictor = SimpleNamespace(decode=decode, decode_pool=pool)

    async def main() -> list:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        files = [InputFile(name=n, data=b"x") for n in names]
        RequestImages(predictor, files, batcher, loop, future, window=2).start()
        return await future

    try:
        return asyncio.run(main()), None
    except RequestError as exc:
        return [], exc
    finally:
        pool.shutdown(wait=True)


def test_a_request_leaves_no_image_announced(tmp_path: Path) -> None:
    model = Gate()
    model.release.set()
    batcher = Batcher(model, workers=2, max_batch_size=4)

    def decode(file: InputFile) -> np.ndarray:
        if file.name == "bad.jpg":
            raise RequestError("images: 'bad.jpg' is not an image", field="images", file=file.name)
        return IMAGE

    rows, error = _request(batcher, decode, [f"{i}.jpg" for i in range(5)])
    assert len(rows) == 5 and error is None
    rows, error = _request(batcher, decode, ["0.jpg", "bad.jpg", "2.jpg", "3.jpg", "4.jpg"])
    assert isinstance(error, RequestError) and error.file == "bad.jpg"
    deadline = time.monotonic() + 5
    while batcher._coming and time.monotonic() < deadline:  # the failed request's last decodes end
        time.sleep(0.01)
    assert batcher._coming == 0  # a leak would make every later lone call run crowded
    batcher.close()


class ClosingPool(ThreadPoolExecutor):
    """A decode pool shut down after its first task, as a closing predictor's pool is."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future = super().submit(fn, *args, **kwargs)
        self.shutdown(wait=False)
        return future


def test_a_pool_shut_down_mid_request_fails_it_and_keeps_the_workers(tmp_path: Path) -> None:
    model = Gate()
    model.release.set()
    batcher = Batcher(model, workers=2, max_batch_size=4)
    batcher.expect(1)  # another image on its way: the request's image goes to a worker thread
    pool = ClosingPool(1)
    predictor = SimpleNamespace(decode=lambda file: IMAGE, decode_pool=pool)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        files = [InputFile(name=f"{i}.jpg", data=b"x") for i in range(3)]
        RequestImages(predictor, files, batcher, loop, future, window=1).start()
        with pytest.raises(RuntimeError, match="shutdown"):  # the worker's next submit is refused
            await asyncio.wait_for(future, 5)

    asyncio.run(main())
    pool.shutdown(wait=True)
    batcher.expect(-1)
    assert batcher._coming == 0  # the refused image is not left announced
    assert all(thread.is_alive() for thread in batcher._threads)  # no worker died in `done`
    assert asyncio.run(batcher.submit(IMAGE)).shape == (1,)
    batcher.close()
