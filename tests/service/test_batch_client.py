"""The batch client: journal, shards and retries alone, then against real `bentoml serve` processes.

The failure tests run the client over a few hundred generated images against a server this module
starts itself (so it can SIGKILL it and start it again), and compare every interrupted-then-resumed
run with an uninterrupted one: same journal entries, each image once, the same predictions.json bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import random
import signal
import subprocess
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from servekit import LABELS, PYTHON, REPO, SERVER_ENV, Server, build_model, image_bytes
from support.bentoserve import free_port, start_serve, wait_ready
from support.tinymodel import SAVE_SCRIPT

from service.batch.client import BatchOptions, run_batch
from service.batch.files import Shard, iter_images, sort_key
from service.batch.http import Outcome, RetryPolicy, post_images
from service.batch.journal import JOURNAL_FILE, Journal
from service.bundles import to_csv
from service.errors import BatchError

N_IMAGES = 240
FAST_RETRY = RetryPolicy(attempts=4, base_s=0.001, cap_s=0.01)


# --- helpers ------------------------------------------------------------------------------------


def make_images(root: Path, count: int, folders: int = 3) -> list[str]:
    """`count` small JPEGs in `folders` subfolders; returns their relative paths."""
    names = []
    for i in range(count):
        rel = f"f{i % folders}/img{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(image_bytes(1000 + i, size=(40, 30)))
        names.append(rel)
    return names


def journal_records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / JOURNAL_FILE).read_bytes().splitlines() if line.strip()]


def done_files(output: Path) -> list[str]:
    path = output / JOURNAL_FILE
    if not path.exists():
        return []
    # Read while the client appends: only lines it has finished (a torn last line is the journal's
    # own business, `Journal.open` cuts it; here it is a line still being written).
    complete = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line)["file"] for line in complete if b'"kind":"done"' in line]


def answer(names: list[str], version: str = "v1") -> dict:
    """A /predict answer for `names`, scores derived from the names (deterministic)."""
    images = []
    for name in names:
        rng = random.Random(name)
        scores = {label: rng.random() for label in LABELS}
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
    return {
        "model": "m",
        "version": version,
        "which": "best",
        "labels": LABELS,
        "count": len(names),
        "images": images,
    }


def uploaded_names(request: httpx.Request) -> list[str]:
    body = request.read().decode("latin-1")
    return [
        part.split('filename="', 1)[1].split('"', 1)[0]
        for part in body.split("\r\n--")[:-1]
        if "filename=" in part
    ]


# --- walking and shards -------------------------------------------------------------------------


def test_walk_is_sorted_by_path_components_and_skips_hidden_and_non_images(tmp_path: Path) -> None:
    for rel in [
        "b.jpg",
        "a/x.png",
        "a b/y.jpg",
        "a/.hidden.jpg",
        ".git/z.jpg",
        "__MACOSX/a.jpg",
        "a/notes.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    walked = iter_images(tmp_path)
    assert isinstance(walked, Iterator)  # lazy
    names = [rel for rel, _ in walked]
    assert names == ["a/x.png", "a b/y.jpg", "b.jpg"]  # "a" < "a b" as folders, though "a b/" < "a/" as text
    assert names == sorted(names, key=sort_key)


def test_shards_partition_the_files_and_do_not_move_when_files_are_added() -> None:
    names = [f"d{i % 7}/img{i}.jpg" for i in range(2000)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s.owns(n) for s in shards].count(True) for n in names]
    assert owners == [1] * len(names)
    sizes = [sum(s.owns(n) for n in names) for s in shards]
    assert all(400 < size < 600 for size in sizes), sizes
    before = {n: next(i for i, s in enumerate(shards) if s.owns(n)) for n in names}
    more = names + [f"new/{i}.jpg" for i in range(500)]
    assert all(next(i for i, s in enumerate(shards) if s.owns(n)) == before[n] for n in more[:2000])
    assert Shard.parse("3/4") == Shard(3, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(BatchError):
            Shard.parse(bad)


# --- journal ------------------------------------------------------------------------------------


def test_journal_cuts_a_torn_last_line_and_keeps_appending(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    header = {"kind": "header", "journal": 1, "images": "/x"}
    journal = Journal.open(path, header)
    journal.append([{"kind": "done", "file": "a.jpg", "version": "v", "scores": {}, "predicted": []}])
    journal.append([{"kind": "failed", "file": "b.jpg", "status": 400, "reason": "bad", "retry": False}])
    journal.close()
    good = path.read_bytes()
    with open(path, "ab") as f:  # a kill in the middle of a write
        f.write(b'{"kind":"done","file":"c.jpg","ver')

    journal = Journal.open(path, header)
    assert "a.jpg" in journal.done and len(journal.done) == 1 and set(journal.failed) == {"b.jpg"}
    assert path.read_bytes() == good
    journal.append([{"kind": "done", "file": "b.jpg", "version": "v", "scores": {}, "predicted": []}])
    journal.close()
    assert [r.get("file") for r in journal_records(tmp_path)] == [None, "a.jpg", "b.jpg", "b.jpg"]
    reopened = Journal.open(path, header)
    assert (
        len(reopened.done) == 2 and "b.jpg" in reopened.done and not reopened.failed
    )  # the later record wins
    reopened.close()


def test_journal_refuses_damage_before_the_last_line_and_other_options(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    header = {"kind": "header", "journal": 1, "which": "best", "model": None}
    journal = Journal.open(path, header)
    journal.append([{"kind": "done", "file": "a.jpg", "version": "v", "scores": {}, "predicted": []}])
    journal.close()
    with pytest.raises(BatchError, match="which='best'"):
        Journal.open(path, {**header, "which": "last"})
    with pytest.raises(BatchError, match="model=None"):
        Journal.open(path, {**header, "model": "cats:v2"})
    with open(path, "ab") as f:
        f.write(b"garbage\n" + b'{"kind":"done","file":"b.jpg","version":"v","scores":{},"predicted":[]}\n')
    with pytest.raises(BatchError, match="damaged"):
        Journal.open(path, header)


# --- retries ------------------------------------------------------------------------------------


def test_backoff_is_jittered_bounded_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=8, base_s=0.5, cap_s=30.0)
    rng = random.Random(0)
    for attempt in range(12):
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= min(30.0, 0.5 * 2**attempt)
        assert len(set(delays)) > 150  # jitter: clients that failed together do not retry together
    assert policy.delay(0, 5.0, rng) >= 5.0
    assert policy.delay(0, 3600.0, rng) == 30.0


def run_post(handler, policy: RetryPolicy = FAST_RETRY) -> Outcome:
    async def go() -> Outcome:
        async with httpx.AsyncClient(
            base_url="http://test", transport=httpx.MockTransport(handler)
        ) as client:
            return await post_images(client, [("a.jpg", b"x")], {"which": "best"}, policy, random.Random(0))

    return asyncio.run(go())


def test_503_429_and_connection_errors_are_retried_then_answered() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow")
        if len(calls) == 3:
            return httpx.Response(503, json={"error": "overloaded"}, headers={"Retry-After": "0"})
        if len(calls) == 4:
            return httpx.Response(429, json={"error": "slow down"})
        return httpx.Response(200, json=answer(["a.jpg"]))

    outcome = run_post(handler, RetryPolicy(attempts=5, base_s=0.001, cap_s=0.01))
    assert outcome.answer is not None and outcome.attempts == 5


def test_retries_are_bounded_and_4xx_is_never_retried() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    outcome = run_post(down)
    assert outcome.answer is None and outcome.retry and outcome.attempts == FAST_RETRY.attempts
    assert outcome.reason.startswith("gave up after 4 tries: ConnectError: connection refused")

    calls = []

    def refused(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"error": "images: 'a.jpg': not a readable image", "field": "images"})

    outcome = run_post(refused)
    assert len(calls) == 1 and outcome.status == 400 and not outcome.retry
    assert outcome.reason == "HTTP 400: images: 'a.jpg': not a readable image"


def test_a_whole_run_over_a_flaky_service_answers_each_image_once(tmp_path: Path) -> None:
    names = make_images(tmp_path / "in", 60)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    rng = random.Random(1)
    sent = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json={"serving": {"max_request_bytes": 1 << 20}})
        files = uploaded_names(request)
        if "broken.jpg" in files:
            return httpx.Response(400, json={"error": "images: 'broken.jpg': not a readable image"})
        if rng.random() < 0.3:
            return httpx.Response(503, json={"error": "overloaded"})
        sent.update(files)
        return httpx.Response(200, json=answer(files))

    options = BatchOptions(
        url="http://test",
        images=tmp_path / "in",
        output=tmp_path / "out",
        concurrency=3,
        per_request=4,
        retry=RetryPolicy(attempts=20, base_s=0.001, cap_s=0.01),
    )
    summary = run_batch(options, transport=httpx.MockTransport(handler))
    assert summary.done == 60 and summary.total == 61 and summary.exit_code == 1
    assert list(summary.failed) == ["broken.jpg"]  # its request-mates were resent alone and answered
    assert Counter(done_files(tmp_path / "out")) == Counter(names)
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [image["filename"] for image in result["images"]] == sorted(names, key=sort_key)
    assert result["failed"] == [
        {"filename": "broken.jpg", "status": 400, "reason": result["failed"][0]["reason"]}
    ]

    again = run_batch(options, transport=httpx.MockTransport(handler))  # nothing left but the refused image
    assert (again.done, again.skipped, list(again.failed)) == (0, 60, ["broken.jpg"])


# --- against the session's real server ---------------------------------------------------------


@pytest.mark.slow
def test_outputs_have_the_service_bundle_layouts(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    images = {f"p{i}.jpg": image_bytes(50 + i) for i in range(6)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    upload = [("images", (name, data, "image/jpeg")) for name, data in images.items()]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        service_csv = client.post(
            "/predict_bundle", files=upload, data={"format": "csv", "which": "last"}
        ).content
        service_zip = client.post(
            "/predict_bundle", files=upload, data={"format": "zip", "which": "last"}
        ).content
    outputs = {}
    for fmt in ("csv", "zip", "json"):
        options = BatchOptions(url=server.url, images=folder, output=tmp_path / fmt, format=fmt, which="last")
        assert run_batch(options).exit_code == 0
        outputs[fmt] = (tmp_path / fmt / f"predictions.{fmt}").read_bytes()
    assert outputs["csv"] == service_csv
    ours, theirs = zipfile.ZipFile(io.BytesIO(outputs["zip"])), zipfile.ZipFile(io.BytesIO(service_zip))
    assert ours.namelist() == theirs.namelist()
    for member in ours.namelist():
        if member != "predictions.json":
            assert ours.read(member) == theirs.read(member), member
    as_json = json.loads(outputs["json"])
    assert to_csv(as_json) == service_csv
    assert (
        json.loads(ours.read("predictions.json"))["images"]
        == json.loads(theirs.read("predictions.json"))["images"]
    )
    rows = list(csv.reader(io.StringIO(outputs["csv"].decode())))
    assert [row[0] for row in rows[1:]] == sorted(images)


@pytest.mark.slow
def test_which_and_model_choose_the_answering_model(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    images = {f"p{i}.jpg": image_bytes(70 + i) for i in range(3)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    upload = [("images", (name, data, "image/jpeg")) for name, data in images.items()]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        direct = client.post("/predict", files=upload, data={"which": "last", "model": server.tag}).json()
    assert direct["which"] == "last"

    options = BatchOptions(
        url=server.url, images=folder, output=tmp_path / "out", which="last", model=server.tag
    )
    assert run_batch(options).exit_code == 0
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert (result["which"], result["version"]) == ("last", direct["version"])
    assert [image["scores"] for image in result["images"]] == [image["scores"] for image in direct["images"]]
    header = journal_records(tmp_path / "out")[0]
    assert (header["which"], header["model"]) == ("last", server.tag)

    unknown = BatchOptions(url=server.url, images=folder, output=tmp_path / "unknown", model="no-such-model")
    with pytest.raises(BatchError, match="the service refused this run's options: HTTP 4"):
        run_batch(unknown)
    assert [r["kind"] for r in journal_records(tmp_path / "unknown")] == ["header"]  # no image blamed


@pytest.mark.slow
def test_files_over_the_services_limit_fail_unread(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(image_bytes(90))
    (folder / "b.jpg").write_bytes(image_bytes(91))
    limit = int(SERVER_ENV["MANYLABEL_MAX_REQUEST_BYTES"])
    with open(folder / "huge.jpg", "wb") as f:  # sparse: nothing to read but zeros, were it read
        f.truncate(limit + 1)
    summary = run_batch(BatchOptions(url=server.url, images=folder, output=tmp_path / "out"))
    assert summary.done == 2 and summary.exit_code == 1
    assert summary.failed == {
        "huge.jpg": f"too large: {limit + 1:,} bytes, over the limit of {limit:,} "
        "(the service's max_request_bytes); not sent"
    }


# --- a server this module can kill --------------------------------------------------------------


class KillableServer:
    """`bentoml serve` in its own process group on a fixed port, started and SIGKILLed at will."""

    def __init__(self, root: Path) -> None:
        home = root / "bentoml_home"
        build_model(root / "model")
        self.env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **SERVER_ENV}
        # A longer wait for batch-mates paces the client (~100 images/s) so kills land mid-run.
        self.env["MANYLABEL_MAX_LATENCY_MS"] = "40"
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), self.env.get("PYTHONPATH", "")])
        subprocess.run(
            [PYTHON, "-c", SAVE_SCRIPT, str(root / "model")], env=self.env, check=True, capture_output=True
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.workers: list[psutil.Process] = []

    def start(self) -> None:
        self.proc = start_serve(self.env, self.log, self.port, new_session=True)
        wait_ready(self.url, self.proc, self.log)
        # Remembered now: a worker outlives a killed arbiter and keeps the port.
        self.workers = psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self) -> None:
        """SIGKILL the server and its workers (circus starts each in a process group of its own)."""
        if self.proc is None:
            return
        procs = [psutil.Process(self.proc.pid)] if self.proc.poll() is None else []
        procs += self.workers
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += procs[0].children(recursive=True) if procs else []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillableServer]:
    srv = KillableServer(tmp_path_factory.mktemp("killable"))
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("many")
    return root, make_images(root, N_IMAGES)


@pytest.fixture(scope="module")
def reference(killable: KillableServer, many_images: tuple[Path, list[str]], tmp_path_factory) -> bytes:
    """predictions.json of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_batch(
        BatchOptions(url=killable.url, images=many_images[0], output=out, concurrency=4, per_request=2)
    )
    assert summary.exit_code == 0 and summary.done == N_IMAGES
    return (out / "predictions.json").read_bytes()


def start_client(url: str, images: Path, output: Path, *extra: str) -> subprocess.Popen:
    cmd = [PYTHON, "-m", "service", "batch", "--url", url, "--images", str(images), "--output", str(output)]
    cmd += ["--concurrency", "2", "--per-request", "2", "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_done(output: Path, count: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(done_files(output)) < count:
        assert proc.poll() is None, f"the client ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the client made no progress"
        time.sleep(0.01)


def check_complete(output: Path, names: list[str], reference: bytes) -> None:
    assert Counter(done_files(output)) == Counter(names)  # each image answered exactly once
    assert (output / "predictions.json").read_bytes() == reference


@pytest.mark.slow
def test_server_killed_midway_then_restarted_and_rerun(
    killable: KillableServer, many_images: tuple[Path, list[str]], reference: bytes, tmp_path: Path
) -> None:
    images, names = many_images
    out = tmp_path / "out"
    client = start_client(killable.url, images, out, "--max-retries", "2")
    try:
        wait_for_done(out, 40, client)
        killable.kill()
        _, stderr = client.communicate(timeout=60)
    finally:
        killable.start()  # later tests need it whatever happened
    assert client.returncode == 75, stderr  # EX_TEMPFAIL: the service went away, rerun to resume
    assert "stopped early, the service stayed unavailable" in stderr
    partial = done_files(out)
    assert 40 <= len(partial) < N_IMAGES and len(set(partial)) == len(partial)
    assert not (out / "predictions.json").exists()  # no final file from an unfinished run

    summary = run_batch(
        BatchOptions(url=killable.url, images=images, output=out, concurrency=2, per_request=2)
    )
    assert summary.exit_code == 0 and not summary.failed
    assert summary.skipped == len(partial) and summary.done == N_IMAGES - len(partial)
    check_complete(out, names, reference)


@pytest.mark.slow
def test_client_interrupted_and_killed_midway_then_resumed(
    killable: KillableServer, many_images: tuple[Path, list[str]], reference: bytes, tmp_path: Path
) -> None:
    images, names = many_images
    out = tmp_path / "out"
    client = start_client(killable.url, images, out)  # Ctrl-C
    wait_for_done(out, 30, client)
    client.send_signal(signal.SIGINT)
    _, stderr = client.communicate(timeout=30)
    assert client.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    first = len(done_files(out))
    assert 30 <= first < N_IMAGES and not (out / "predictions.json").exists()

    client = start_client(killable.url, images, out)  # a hard kill: no chance to clean up
    wait_for_done(out, first + 60, client)
    client.kill()
    client.communicate(timeout=30)
    second = len(done_files(out))
    assert second < N_IMAGES, "the client finished before it could be killed"

    client = start_client(killable.url, images, out)
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr
    assert f"{N_IMAGES - second} answered now" in stderr and f"{second} skipped as already done" in stderr
    check_complete(out, names, reference)
