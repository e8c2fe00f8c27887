"""The batch sender over `httpx.MockTransport`: failed requests split, files over the limit, refused
options, the form it sends.

A service that fails a whole request because of one of its images (a 500 from one poison image, say)
needs a specially broken server, so a fake transport stands in for the service here. The runs against
a real `bentoml serve` are in tests/service/test_batch_client.py.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.batch import cli as batch_cli
from service.batch.client import BatchOptions, RetryPolicy, run_batch
from service.batch.journal import JOURNAL_FILE
from service.errors import BatchError

LABELS = ["cat", "dog"]
FAST_RETRY = RetryPolicy(attempts=2, base_s=0.001, cap_s=0.01)
MODEL_INFO = {"name": "m", "serving": {"max_request_bytes": 1 << 20}}

Handler = Callable[[httpx.Request], httpx.Response]


def make_files(root: Path, sizes: dict[str, int]) -> list[str]:
    """Files of the given sizes (their bytes are never decoded: the service is fake)."""
    for name, size in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    return list(sizes)


def form(request: httpx.Request) -> tuple[dict[str, str], list[str]]:
    """(form fields, uploaded file names) of a multipart request."""
    boundary = request.headers["content-type"].split("boundary=", 1)[1]
    fields, files = {}, []
    for part in request.read().decode("latin-1").split(f"--{boundary}")[1:-1]:
        head, _, value = part.partition("\r\n\r\n")
        if 'filename="' in head:
            files.append(head.split('filename="', 1)[1].split('"', 1)[0])
        else:
            fields[head.split('name="', 1)[1].split('"', 1)[0]] = value.removesuffix("\r\n")
    return fields, files


def answer(names: list[str]) -> dict:
    images = []
    for name in names:
        scores = {label: random.Random(f"{name}{label}").random() for label in LABELS}
        predicted = [label for label in LABELS if scores[label] >= 0.5]
        images.append(
            {
                "filename": name,
                "scores": scores,
                "predicted": predicted,
                "above": {label: label in predicted for label in LABELS},
                "thresholds": dict.fromkeys(LABELS, 0.5),
            }
        )
    return {"model": "m", "version": "v1", "which": "best", "labels": LABELS, "images": images}


class FakeService:
    """Answers GET /model with `model_info` and POST /predict with `predict`; remembers the requests."""

    def __init__(self, predict: Handler, model_info: dict | None = None) -> None:
        self.predict = predict
        self.model_info = MODEL_INFO if model_info is None else model_info
        self.posts: list[list[str]] = []  # the file names of each POST, in order
        self.fields: list[dict[str, str]] = []
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/model":
            self.gets += 1
            return httpx.Response(200, json=self.model_info)
        fields, files = form(request)
        self.posts.append(files)
        self.fields.append(fields)
        return self.predict(request)

    def run(self, options: BatchOptions):
        return run_batch(options, transport=httpx.MockTransport(self))


def options_for(tmp_path: Path, **kwargs) -> BatchOptions:
    base = {
        "url": "http://test",
        "images": tmp_path / "in",
        "output": tmp_path / "out",
        "concurrency": 1,  # one request at a time: the request order is the test's to check
        "per_request": 4,
        "retry": FAST_RETRY,
    }
    return BatchOptions(**{**base, **kwargs})


def journal_records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "out" / JOURNAL_FILE).read_bytes().splitlines()
    return [json.loads(line) for line in lines]


# --- a request the service does not answer is split ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (500, {"error": "an unexpected error occurred; the server log has the details"}, True),
        (413, {"error": "request body of 9,000+ bytes is over the limit", "field": None}, False),
        (400, {"error": "images: 'a5.jpg': not a readable image", "field": "images"}, False),
    ],
)
def test_one_bad_image_is_bisected_out_and_only_it_fails(
    tmp_path: Path, status: int, body: dict, transient: bool
) -> None:
    names = make_files(tmp_path / "in", {f"a{i}.jpg": 10 for i in range(9)})
    answered: Counter[str] = Counter()

    def predict(request: httpx.Request) -> httpx.Response:
        _, files = form(request)
        if "a5.jpg" in files:
            return httpx.Response(status, json=body)
        answered.update(files)
        return httpx.Response(200, json=answer(files))

    service = FakeService(predict)
    summary = service.run(options_for(tmp_path))

    # [a0-a3] ok; [a4-a7] fails -> [a4 a5] fails -> [a4] ok, [a5] fails; [a6 a7] ok; [a8] ok
    assert [len(files) for files in service.posts] == [4, 4, 2, 1, 1, 2, 1]
    assert answered == Counter(name for name in names if name != "a5.jpg")  # each good image once
    assert summary.failed == {"a5.jpg": f"HTTP {status}: {body['error']}"}
    assert summary.transient == ({"a5.jpg"} if transient else set())
    assert summary.exit_code == (75 if transient else 1) and summary.done == 8 and not summary.stopped
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [image["filename"] for image in result["images"]] == [n for n in names if n != "a5.jpg"]
    assert result["failed"] == [{"filename": "a5.jpg", "status": status, "reason": summary.failed["a5.jpg"]}]

    again = service.run(options_for(tmp_path))  # a rerun sends the bad image alone, if anything
    assert service.posts[7:] == ([["a5.jpg"]] if transient else [])
    assert again.skipped == 8 and list(again.failed) == ["a5.jpg"]


def test_a_service_that_stays_unavailable_stops_the_run_without_splitting(tmp_path: Path) -> None:
    make_files(tmp_path / "in", {f"a{i}.jpg": 10 for i in range(8)})

    def predict(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "overloaded"})

    service = FakeService(predict)
    summary = service.run(options_for(tmp_path))
    assert service.posts == [[f"a{i}.jpg" for i in range(4)]] * FAST_RETRY.attempts  # retried, not split
    assert summary.stopped == f"gave up after {FAST_RETRY.attempts} tries: HTTP 503: overloaded"
    assert summary.exit_code == 75 and summary.transient == {f"a{i}.jpg" for i in range(4)}
    assert summary.output is None


def test_a_refused_option_stops_the_run_and_a_corrected_rerun_starts_afresh(tmp_path: Path) -> None:
    """An unknown --model would make every image fail one by one; the run stops at the first refusal."""
    make_files(tmp_path / "in", {f"a{i}.jpg": 10 for i in range(12)})

    def predict(request: httpx.Request) -> httpx.Response:
        fields, files = form(request)
        if fields.get("model") != "cats:3":
            error = f"model: no stored model {fields.get('model')!r}; the store has 'cats'"
            return httpx.Response(404, json={"error": error, "field": "model"})
        return httpx.Response(200, json=answer(files))

    service = FakeService(predict)
    with pytest.raises(
        BatchError, match="refused this run's options: HTTP 404: model: no stored model 'dogs'"
    ):
        service.run(options_for(tmp_path, model="dogs"))
    assert len(service.posts) == 1  # neither split nor sent again
    assert [r["kind"] for r in journal_records(tmp_path)] == ["header"]  # no image blamed

    # The journal holds no answer yet, so the corrected command may reuse the output folder.
    summary = service.run(options_for(tmp_path, model="cats:3"))
    assert summary.exit_code == 0 and summary.done == 12
    assert journal_records(tmp_path)[0]["model"] == "cats:3"


# --- files over the service's limit -------------------------------------------------------------


def test_files_over_the_services_limit_fail_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_files(tmp_path / "in", {"a.jpg": 300, "big.jpg": 1001, "c.jpg": 400, "d.jpg": 1000})
    read: list[str] = []
    read_bytes = Path.read_bytes

    def spy(path: Path) -> bytes:
        read.append(path.name)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", spy)
    service = FakeService(
        lambda request: httpx.Response(200, json=answer(form(request)[1])),
        {"serving": {"max_request_bytes": 1000}},
    )
    summary = service.run(options_for(tmp_path))
    assert "big.jpg" not in read
    reason = "too large: 1,001 bytes, over the limit of 1,000 (the service's max_request_bytes); not sent"
    assert summary.failed == {"big.jpg": reason}
    assert summary.exit_code == 1 and not summary.transient and service.gets == 1
    assert service.posts == [["a.jpg", "c.jpg"], ["d.jpg"]]  # groups kept within the limit too

    again = service.run(options_for(tmp_path, retry_failed=True, max_file_bytes=2000))
    assert service.gets == 1  # --max-file-bytes: no need to ask
    assert again.exit_code == 0 and service.posts[-1] == ["big.jpg"]


def test_no_limit_from_the_service_stops_before_reading_anything(tmp_path: Path) -> None:
    make_files(tmp_path / "in", {"a.jpg": 10})

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    summary = run_batch(options_for(tmp_path), transport=httpx.MockTransport(down))
    assert summary.exit_code == 75
    assert summary.stopped == "GET /model: gave up after 2 tries: ConnectError: connection refused"
    assert [r["kind"] for r in journal_records(tmp_path)] == ["header"]

    no_limit = FakeService(lambda request: httpx.Response(500), {"serving": {}})
    with pytest.raises(BatchError, match="no serving.max_request_bytes; give --max-file-bytes"):
        no_limit.run(options_for(tmp_path))
    assert no_limit.posts == []


def test_nothing_left_to_send_needs_no_service(tmp_path: Path) -> None:
    make_files(tmp_path / "in", {"a.jpg": 10, "b.jpg": 10})
    FakeService(lambda request: httpx.Response(200, json=answer(form(request)[1]))).run(options_for(tmp_path))
    (tmp_path / "out" / "predictions.json").unlink()

    def down(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.method} {request.url}")

    summary = run_batch(options_for(tmp_path), transport=httpx.MockTransport(down))
    assert summary.exit_code == 0 and summary.skipped == 2
    assert (tmp_path / "out" / "predictions.json").exists()


# --- what is sent --------------------------------------------------------------------------------


def parse(*argv: str) -> BatchOptions:
    parser = argparse.ArgumentParser()
    batch_cli.register(parser.add_subparsers(dest="command"))
    return batch_cli._options(
        parser.parse_args(["batch", "--url", "http://x/", "--images", "i", "--output", "o", *argv])
    )


def test_which_and_model_flags_become_form_fields_and_the_journal_header(tmp_path: Path) -> None:
    assert parse().which == "best" and parse().model is None and parse().max_file_bytes is None
    options = parse("--which", "last", "--model", "cats:3", "--max-file-bytes", "5000", "--threshold", "0.3")
    assert (options.which, options.model, options.max_file_bytes) == ("last", "cats:3", 5000)
    assert options.form_fields() == {"which": "last", "model": "cats:3", "threshold": "0.3"}
    assert parse().form_fields() == {"which": "best"}  # no model: the service's own
    with pytest.raises(SystemExit):
        parse("--which", "cats")

    make_files(tmp_path / "in", {"a.jpg": 10})
    service = FakeService(lambda request: httpx.Response(200, json=answer(form(request)[1])))
    service.run(options_for(tmp_path, which="last", model="cats"))
    assert service.fields == [{"which": "last", "model": "cats"}]
    header = journal_records(tmp_path)[0]
    assert (header["which"], header["model"]) == ("last", "cats")
