"""The studio over HTTP, against a real `manylabel studio`: upload the bundled sample, estimate, train
a 1-minute job while following its events, serve the new model at once, cancel a job, restart.

Timings (upload, estimate, the job end to end, /predict latency of the model served before, idle and
while the job trains) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from studiokit import SAMPLE, SERVED, StudioServer, zip_of

pytestmark = pytest.mark.slow

NAME = "studio-sample"


def sample_rows() -> dict[str, set[str]]:
    with open(SAMPLE / "labels.csv", newline="") as f:
        return {row[0]: set(row[1:]) for row in csv.reader(f) if row}


def predict(client: httpx.Client, image: bytes, model: str) -> httpx.Response:
    return client.post(
        "/predict", files={"images": ("probe.jpg", image, "image/jpeg")}, data={"model": model}
    )


def refused(response: httpx.Response, status: int, field: str | None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "field", "file"} and body["field"] == field, body
    return body["error"]


def latencies(client: httpx.Client, image: bytes, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        assert predict(client, image, SERVED).status_code == 200
        out.append(time.perf_counter() - t0)
    return out


def summary(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return f"median {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms over {len(ms)}"


def follow(client: httpx.Client, job: int, limit_s: float = 420.0) -> Iterator[dict[str, Any]]:
    """Each view the job's event stream sends, as it comes, until the job ends."""
    deadline = time.monotonic() + limit_s
    with client.stream("GET", f"/jobs/{job}/events", timeout=httpx.Timeout(60)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])
            assert time.monotonic() < deadline, f"job {job} did not end within {limit_s} s"


def torch_loaded(studio: StudioServer) -> dict[str, bool]:
    """command line -> whether the process has a torch library mapped, for the server's process tree."""
    loaded = {}
    for pid, command in studio.processes().items():
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        loaded[command] = "libtorch" in maps
    return loaded


@pytest.fixture(scope="module")
def dataset(client: httpx.Client) -> dict[str, Any]:
    files = [
        ("images", ("sample.zip", zip_of(SAMPLE / "images"), "application/zip")),
        ("labels", ("labels.csv", (SAMPLE / "labels.csv").read_bytes(), "text/csv")),
    ]
    t0 = time.perf_counter()
    r = client.post("/datasets", data={"name": "sample"}, files=files)
    seconds = time.perf_counter() - t0
    assert r.status_code == 201, r.text
    print(f"\nupload: the sample ({r.json()['images']} images, zip + CSV) in {seconds:.2f} s")
    return r.json()


@pytest.fixture(scope="module")
def trained(client: httpx.Client, studio: StudioServer, dataset: dict, probe_image: bytes) -> dict[str, Any]:
    """One 1-minute job on the sample, followed to its end, with what happened around it."""
    out: dict[str, Any] = {"idle": latencies(client, probe_image, 30)}
    t0 = time.perf_counter()
    estimate = client.post("/jobs/estimate", json={"dataset": dataset["id"], "minutes": 1})
    out["estimate_s"], out["estimate"] = time.perf_counter() - t0, estimate.json()
    assert estimate.status_code == 200, estimate.text
    t0 = time.perf_counter()
    r = client.post("/jobs", json={"dataset": dataset["id"], "name": NAME, "minutes": 1, "seed": 0})
    assert r.status_code == 202 and r.json()["state"] == "queued", r.text
    job = r.json()["id"]
    # While it runs: the same model name again is refused, another job waits its turn.
    out["duplicate"] = client.post("/jobs", json={"dataset": dataset["id"], "name": NAME, "minutes": 1})
    waiting = client.post("/jobs", json={"dataset": dataset["id"], "name": "waits", "minutes": 1}).json()
    out["waiting"] = client.get(f"/jobs/{waiting['id']}").json()
    out["waiting_cancelled"] = client.delete(f"/jobs/{waiting['id']}")
    during: list[float] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        with httpx.Client(base_url=studio.url, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                assert predict(c, probe_image, SERVED).status_code == 200
                during.append(time.perf_counter() - t)
                time.sleep(0.1)

    thread = threading.Thread(target=keep_predicting, daemon=True)
    thread.start()
    views = []
    try:
        for view in follow(client, job):
            views.append(view)
            if view["stage"] == "train" and "torch" not in out:
                out["torch"] = torch_loaded(studio)
    finally:
        stop.set()
        thread.join(timeout=60)
    out.update(job=job, views=views, seconds=time.perf_counter() - t0, during=during)
    print(f"estimate: {out['estimate_s'] * 1000:.0f} ms: {json.dumps(out['estimate'])}")
    print(f"job: 1-minute budget, queued to done in {out['seconds']:.1f} s, {len(views)} events")
    print(f"/predict of {SERVED}: idle {summary(out['idle'])}; during the job {summary(during)}")
    return out


def test_the_sample_uploads_as_a_zip_with_its_csv(dataset: dict) -> None:
    rows = sample_rows()
    counts = {
        label: sum(label in labels for labels in rows.values()) for label in set().union(*rows.values())
    }
    assert dataset["images"] == len(list((SAMPLE / "images").iterdir())) == 55
    assert dataset["labelled"] == len(rows) and dataset["unlabelled"] == dataset["images"] - len(rows)
    assert dataset["labels"] == counts and dataset["problems"] == [] and dataset["version"] == 1


def test_datasets_are_listed_and_their_labels_download_as_training_csv(client: httpx.Client, dataset) -> None:
    listed = client.get("/datasets").json()["datasets"]
    assert [d["id"] for d in listed if d["name"] == "sample"] == [dataset["id"]]
    assert client.get(f"/datasets/{dataset['id']}").json()["labels"] == dataset["labels"]
    r = client.get(f"/datasets/{dataset['id']}/labels.csv")
    assert r.headers["content-type"].startswith("text/csv")
    got = {row[0]: set(row[1:]) for row in csv.reader(io.StringIO(r.text)) if row and row[0] != "filename"}
    assert got == {f"images/{name}": labels for name, labels in sample_rows().items()}


def test_images_are_added_once_and_labels_merge(client: httpx.Client, probe_image: bytes) -> None:
    sample = sorted((SAMPLE / "images").iterdir())[:2]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in sample]
    files.append(("images", ("broken.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")))
    first = client.post("/datasets", data={"name": "scratch"}, files=files)
    assert first.status_code == 201 and first.json()["images"] == 2 and first.json()["labelled"] == 0
    assert [p["file"] for p in first.json()["problems"]] == ["broken.jpg"]
    ds = first.json()["id"]
    again = client.post(f"/datasets/{ds}/images", files=[*files[:2], ("images", ("new.jpg", probe_image))])
    assert again.json()["images"] == 3 and again.json()["version"] == 2
    labels = f"{sample[0].name},cat\n{sample[1].name},cat,dog\nnowhere.jpg,dog\n".encode()
    merged = client.post(f"/datasets/{ds}/labels", files={"labels": ("more.csv", labels, "text/csv")})
    body = merged.json()
    assert body["labels"] == {"cat": 2, "dog": 1} and body["labelled"] == 2 and body["unlabelled"] == 1
    assert body["version"] == 3 and [p["file"] for p in body["problems"]] == ["nowhere.jpg"]


def test_refusals_name_their_field(client: httpx.Client, dataset: dict) -> None:
    ds = dataset["id"]
    job = {"dataset": ds, "name": "refused", "minutes": 1}
    refused(client.post("/jobs", json={**job, "dataset": 999}), 404, "dataset")
    refused(client.post("/jobs/estimate", json={**job, "dataset": "no-such"}), 404, "dataset")
    error = refused(
        client.post("/jobs", json={**job, "include": ["hat"], "exclude": ["hat"]}), 400, "exclude"
    )
    assert "no labels are left" in error
    error = refused(client.post("/jobs", json={**job, "val_images": ["images/nope.jpg"]}), 400, "val_images")
    assert "nope.jpg" in error
    refused(client.post("/jobs", json={**job, "minutes": 0}), 400, "minutes")
    refused(client.post("/jobs", json={**job, "minutes": 10**6}), 400, "minutes")
    refused(client.post("/jobs", json={**job, "name": "Not A Name"}), 400, "name")
    refused(client.post("/jobs", content=json.dumps(job)), 415, "body")
    refused(client.get("/jobs/12345"), 404, "id")
    refused(client.get("/datasets/12345"), 404, "id")
    refused(client.get("/datasets/x"), 400, "id")
    refused(predict(client, b"", "no-such-model"), 404, "model")
    csv_body = {"labels": ("bad.csv", b"file,a,b\nx.jpg,1,0\ny.jpg,7,0\n", "text/csv")}
    assert "line 3" in refused(client.post(f"/datasets/{ds}/labels", files=csv_body), 400, "labels")
    files = {"images": ("a.jpg", b"x")}
    refused(client.post("/datasets", data={"name": "sample"}, files=files), 409, "name")
    # Writes: this machine only (no token set), never a page from elsewhere.
    refused(client.post("/jobs", json=job, headers={"Host": "studio.example.com"}), 403, "authorization")
    evil = {"Origin": "http://evil.example"}
    refused(client.post("/datasets", data={"name": "x"}, files=files, headers=evil), 403, "authorization")
    refused(client.delete("/jobs/1", headers={"Sec-Fetch-Site": "cross-site"}), 403, "authorization")


def test_a_job_trains_and_streams_its_progress(trained: dict) -> None:
    views = trained["views"]
    assert views[-1]["state"] == "done", views[-1]
    assert views[-1]["model"].startswith(f"{NAME}:") and views[-1]["progress"] == 1.0
    progress = [v["progress"] for v in views]
    assert progress == sorted(progress), "progress never goes back"
    assert {v["state"] for v in views} <= {"queued", "running", "done"}
    epochs = [v for v in views if v["stage"] == "train" and v["epoch"]]
    assert epochs and all(v["train_loss"] > 0 and v["val_loss"] > 0 for v in epochs)
    assert [v["epoch"] for v in epochs] == sorted(v["epoch"] for v in epochs)
    assert all(v["eta_s"] is not None and v["eta_s"] >= 0 for v in views if v["state"] == "running")
    assert views[-1]["featurised"] == trained["estimate"]["to_featurise"] == 55


def test_one_job_at_a_time_and_one_per_model_name(trained: dict) -> None:
    assert "already trains" in refused(trained["duplicate"], 409, "name")
    assert trained["waiting"]["state"] == "queued"
    assert trained["waiting_cancelled"].status_code == 200
    assert trained["waiting_cancelled"].json()["state"] == "cancelled"


def test_the_server_never_loads_torch_only_the_training_child_does(trained: dict) -> None:
    loaded = trained["torch"]
    training = [command for command in loaded if " train " in command]
    assert training and all(loaded[c] for c in training), loaded
    assert not any(loaded[c] for c in loaded if c not in training), loaded


def test_the_new_model_is_served_at_once(client: httpx.Client, trained: dict) -> None:
    tag = trained["views"][-1]["model"]
    listed = {m["tag"] for m in client.get("/models").json()["models"] if "tag" in m}
    assert tag in listed
    image = sorted((SAMPLE / "images").iterdir())[0]
    answer = predict(client, image.read_bytes(), NAME).json()
    assert f"{answer['model']}:{answer['version']}" == tag
    assert set(answer["labels"]) == set().union(*sample_rows().values())
    assert client.get(f"/jobs/{trained['job']}").json()["model"] == tag


def test_predictions_keep_answering_while_a_job_trains(trained: dict) -> None:
    during = trained["during"]
    assert len(during) >= 20, "the served model answered throughout the job"
    assert statistics.median(during) < 2.0, summary(during)


def test_the_estimate_learns_from_finished_jobs(client: httpx.Client, dataset: dict, trained: dict) -> None:
    before = trained["estimate"]
    assert before["to_featurise"] == 55 and not before["measured"] and before["steps"] > 0
    after = client.post("/jobs/estimate", json={"dataset": dataset["id"], "minutes": 1}).json()
    assert after["to_featurise"] == 0 and after["measured"] and after["feature_seconds"] == 0
    assert after["labels"] == before["labels"]


def test_a_cancelled_job_leaves_no_model(
    client: httpx.Client, studio: StudioServer, dataset, trained
) -> None:
    r = client.post("/jobs", json={"dataset": dataset["id"], "name": "cancelled-model", "minutes": 1})
    job = r.json()["id"]
    running = wait_until(client, job, lambda v: v["state"] == "running" and v["stage"] == "train")
    assert running["state"] == "running"
    t0 = time.perf_counter()
    r = client.delete(f"/jobs/{job}")
    print(f"cancel: a running job stopped in {time.perf_counter() - t0:.2f} s")
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert not any(m.get("name") == "cancelled-model" for m in client.get("/models").json()["models"])
    assert not any(f"jobs/{job}/" in command for command in studio.processes().values())
    refused(client.delete(f"/jobs/{trained['job']}"), 409, "id")


def test_a_restart_fails_the_running_job_and_keeps_the_dataset(
    client: httpx.Client, studio: StudioServer, dataset: dict
) -> None:
    labels_before = client.get(f"/datasets/{dataset['id']}/labels.csv").text
    job = client.post("/jobs", json={"dataset": dataset["id"], "name": "interrupted", "minutes": 1}).json()[
        "id"
    ]
    wait_until(client, job, lambda v: v["state"] == "running")
    studio.stop()
    studio.start()
    view = client.get(f"/jobs/{job}").json()
    assert view["state"] == "failed" and "studio stopped while this job ran" in view["error"]
    assert client.get(f"/datasets/{dataset['id']}/labels.csv").text == labels_before
    assert client.get(f"/datasets/{dataset['id']}").json()["images"] == dataset["images"]
    assert not any(m.get("name") == "interrupted" for m in client.get("/models").json()["models"])


def wait_until(client: httpx.Client, job: int, done: Any, limit_s: float = 180.0) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job}").json()
        if done(view) or view["state"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.3)
    raise AssertionError(f"job {job}: {view}")


def test_the_studio_routes_are_on_the_openapi_page(client: httpx.Client) -> None:
    paths = client.get("/docs.json").json()["paths"]
    assert {"/datasets", "/datasets/{id}/labels.csv", "/jobs", "/jobs/estimate", "/jobs/{id}/events"} <= set(
        paths
    )
    assert {"/predict", "/stats", "/thresholds"} <= set(paths), "the production routes are there too"
