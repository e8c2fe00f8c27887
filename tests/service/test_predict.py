"""The service's endpoints against a real `bentoml serve`: status and body of each."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servekit import LABELS, MODEL_NAME, REPO, THRESHOLDS, Server

pytestmark = pytest.mark.slow


def upload(*names_and_data: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "application/octet-stream")) for name, data in names_and_data]


def predict(client: httpx.Client, files: list, **fields: str) -> httpx.Response:
    return client.post("/predict", files=files, data=fields)


def check_image_answer(row: dict, thresholds: list[float]) -> None:
    assert set(row) == {"filename", "scores", "predicted", "above", "thresholds"}
    assert list(row["scores"]) == LABELS
    assert all(0.0 <= s <= 1.0 for s in row["scores"].values())
    assert row["thresholds"] == dict(zip(LABELS, thresholds, strict=True))
    for label in LABELS:
        assert row["above"][label] == (row["scores"][label] >= row["thresholds"][label])
    assert row["predicted"] == [label for label in LABELS if row["above"][label]]


def test_livez_and_readyz(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.text.strip() == ""


def test_model_summary(client: httpx.Client, server: Server) -> None:
    r = client.get("/model")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == MODEL_NAME and body["tag"] == server.tag
    assert body["labels"] == LABELS
    for which in ("best", "last"):
        assert body["models"][which]["thresholds"] == dict(zip(LABELS, THRESHOLDS[which], strict=True))
        assert body["models"][which]["metrics"]["validation"]["map"] == 0.7
    assert body["provider"] == {"requested": "cpu", "active": "CPUExecutionProvider", "note": None}
    assert body["serving"]["max_files"] == 20 and body["serving"]["max_batch_size"] == 8
    assert body["versions"]["schema"] == 1 and body["versions"]["bentoml"] == "1.4.39"
    assert f"manylabel serving {server.tag} on CPUExecutionProvider" in server.log.read_text()


def test_openapi_documents_the_multipart_form(client: httpx.Client) -> None:
    r = client.get("/docs.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    form = paths["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"images", "model", "which", "threshold", "thresholds"} <= set(form["properties"])
    assert (
        "format"
        in paths["/predict_bundle"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
            "properties"
        ]
    )


def test_predict_one_image(client: httpx.Client, server: Server, images: dict[str, bytes]) -> None:
    r = predict(client, upload(("red.jpg", images["red.jpg"])))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL_NAME and f"{body['model']}:{body['version']}" == server.tag
    assert body["which"] == "best" and body["labels"] == LABELS and body["count"] == 1
    assert body["images"][0]["filename"] == "red.jpg"
    check_image_answer(body["images"][0], THRESHOLDS["best"])


def test_an_answer_leaves_the_server_in_one_write(server: Server, images: dict[str, bytes]) -> None:
    """`http.coalesce` in the real server: the head and body of an answer are one segment, so the
    first recv holds all of it (uvicorn alone wrote the headers first: a second recv for the body)."""
    request = httpx.Request("POST", f"{server.url}/predict", files=upload(("red.jpg", images["red.jpg"])))
    head = f"POST /predict HTTP/1.1\r\nHost: {request.url.netloc.decode()}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    with socket.create_connection((request.url.host, request.url.port), timeout=30) as sock:
        for _ in range(3):  # keep-alive: every answer on the connection
            sock.sendall(head.encode() + b"\r\n" + request.read())
            first = sock.recv(1 << 20)
            answer_head, _, body = first.partition(b"\r\n\r\n")
            assert answer_head.startswith(b"HTTP/1.1 200"), first[:200]
            length = int(re.search(rb"content-length: (\d+)", answer_head, re.I).group(1))
            assert len(body) == length and json.loads(body)["count"] == 1


def test_predict_every_format_in_upload_order(client: httpx.Client, images: dict[str, bytes]) -> None:
    r = predict(client, upload(*images.items()))
    assert r.status_code == 200, r.text
    rows = r.json()["images"]
    assert [row["filename"] for row in rows] == list(images)
    for row in rows:
        check_image_answer(row, THRESHOLDS["best"])
    assert len({tuple(row["scores"].values()) for row in rows}) == len(rows)  # different images


def test_last_model_has_its_own_scores_and_thresholds(client: httpx.Client, images: dict[str, bytes]) -> None:
    files = upload(("red.jpg", images["red.jpg"]))
    best = predict(client, files).json()["images"][0]
    r = predict(client, files, which="last")
    assert r.status_code == 200 and r.json()["which"] == "last"
    last = r.json()["images"][0]
    check_image_answer(last, THRESHOLDS["last"])
    assert last["scores"] != best["scores"]


def test_one_threshold_for_every_label(client: httpx.Client, images: dict[str, bytes]) -> None:
    r = predict(client, upload(("red.jpg", images["red.jpg"])), threshold="0")
    assert r.status_code == 200
    row = r.json()["images"][0]
    check_image_answer(row, [0.0] * len(LABELS))
    assert row["predicted"] == LABELS


def test_thresholds_override_only_named_labels(client: httpx.Client, images: dict[str, bytes]) -> None:
    r = predict(
        client, upload(("red.jpg", images["red.jpg"])), thresholds=json.dumps({"cat": 0.01, "dog": 1})
    )
    assert r.status_code == 200, r.text
    row = r.json()["images"][0]
    check_image_answer(row, [0.01, 1.0, THRESHOLDS["best"][2]])


def test_json_encoded_fields_as_bentoml_client_sends_them(
    client: httpx.Client, images: dict[str, bytes]
) -> None:
    # BentoML's client JSON-encodes every non-file field: "last" arrives with its quotes.
    r = predict(client, upload(("red.jpg", images["red.jpg"])), which='"last"', threshold="0.25")
    assert r.status_code == 200, r.text
    assert r.json()["which"] == "last"
    check_image_answer(r.json()["images"][0], [0.25] * len(LABELS))


def test_zip_of_images(client: httpx.Client, images: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pets/red.jpg", images["red.jpg"])
        archive.writestr("green.png", images["green.png"])
        archive.writestr("notes.txt", b"not an image: skipped")
        archive.writestr("__MACOSX/pets/._red.jpg", b"resource fork: skipped")
    r = predict(client, upload(("batch.zip", buffer.getvalue()), ("grey.jpg", images["grey.jpg"])))
    assert r.status_code == 200, r.text
    assert [row["filename"] for row in r.json()["images"]] == ["pets/red.jpg", "green.png", "grey.jpg"]


def test_same_name_uploads_are_kept_apart(client: httpx.Client, images: dict[str, bytes]) -> None:
    files = upload(("a.jpg", images["red.jpg"]), ("a.jpg", images["small.jpg"]))
    r = predict(client, files)
    assert r.status_code == 200
    rows = r.json()["images"]
    assert [row["filename"] for row in rows] == ["a.jpg", "a.jpg"] and rows[0]["scores"] != rows[1]["scores"]
    bundle = client.post("/predict_bundle", files=files, data={"format": "csv"})
    names = [row[0] for row in csv.reader(io.StringIO(bundle.text))][1:]
    assert names == ["a.jpg", "a (2).jpg"]


def test_bundle_zip_has_a_folder_per_label_and_safe_names(
    client: httpx.Client, images: dict[str, bytes]
) -> None:
    files = upload(("../../etc/evil.jpg", images["red.jpg"]), ("..\\x\\green.png", images["green.png"]))
    r = client.post("/predict_bundle", files=files, data={"format": "zip", "threshold": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert 'filename="predictions.zip"' in r.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(archive.namelist())
    # threshold 0: every image in every label's folder; "traffic/light" becomes one safe folder.
    expected = {
        f"{folder}/{name}"
        for folder in ("cat", "dog", "traffic_light")
        for name in ("etc_evil.jpg", "x_green.png")
    }
    assert names == expected | {"predictions.json", "predictions.csv"}
    assert archive.read("dog/etc_evil.jpg") == images["red.jpg"]
    listed = json.loads(archive.read("predictions.json"))
    assert [row["file"] for row in listed["images"]] == ["etc_evil.jpg", "x_green.png"]
    assert [row["filename"] for row in listed["images"]] == ["../../etc/evil.jpg", "..\\x\\green.png"]


def test_bundle_zip_unlabeled_folder(client: httpx.Client, images: dict[str, bytes]) -> None:
    r = client.post(
        "/predict_bundle",
        files=upload(("red.jpg", images["red.jpg"])),
        data={"format": "zip", "threshold": "1"},
    )
    assert r.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert names == {"_unlabeled/red.jpg", "predictions.json", "predictions.csv"}


def test_bundle_csv_layout(client: httpx.Client, images: dict[str, bytes]) -> None:
    files = upload(("red.jpg", images["red.jpg"]), ("green.png", images["green.png"]))
    answer = predict(client, files).json()
    r = client.post("/predict_bundle", files=files, data={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "filename",
        "label_1",
        "label_2",
        "label_3",
        "score:cat",
        "score:dog",
        "score:traffic/light",
    ]
    for row, image in zip(rows[1:], answer["images"], strict=True):
        assert row[0] == image["filename"]
        assert [c for c in row[1:4] if c] == image["predicted"]
        assert [float(c) for c in row[4:]] == [image["scores"][label] for label in LABELS]


def test_bundle_json_is_the_predict_answer(client: httpx.Client, images: dict[str, bytes]) -> None:
    files = upload(("red.jpg", images["red.jpg"]))
    r = client.post("/predict_bundle", files=files, data={"format": "json", "which": "last"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == predict(client, files, which="last").json()


def test_http_scores_equal_in_process_cli_scores(
    client: httpx.Client, server: Server, images: dict[str, bytes], tmp_path: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "cli.json"
    cmd = [sys.executable, "-m", "service", "predict", "--model", MODEL_NAME, "--images", str(folder)]
    cmd += ["--which", "last", "--format", "json", "--output", str(out)]
    subprocess.run(cmd, cwd=REPO, env=server.env, check=True, capture_output=True)
    cli = {row["filename"]: row for row in json.loads(out.read_text())["images"]}
    http = predict(client, upload(*images.items()), which="last").json()["images"]
    assert sorted(cli) == sorted(images)
    for row in http:
        expected = cli[row["filename"]]
        np.testing.assert_allclose(list(row["scores"].values()), list(expected["scores"].values()), atol=1e-6)
        assert row["predicted"] == expected["predicted"]


def _batch_counts(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    ones = re.search(r'manylabel_batch_size_bucket\{le="1.0",model="best"\} (\S+)', text)
    count = re.search(r'manylabel_batch_size_count\{model="best"\} (\S+)', text)
    assert ones and count, text[-2000:]
    return float(ones.group(1)), float(count.group(1))


def test_concurrent_requests_share_inference_calls(server: Server, images: dict[str, bytes]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as probe:
        ones_before, count_before = _batch_counts(probe)
    statuses: list[int] = []

    def worker(seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:  # one client per thread
            for k in range(5):
                name = list(images)[(seed + k) % len(images)]
                statuses.append(own.post("/predict", files=upload((name, images[name]))).status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 40
    with httpx.Client(base_url=server.url, timeout=60) as probe:
        ones_after, count_after = _batch_counts(probe)
    # 40 one-image requests in fewer inference calls: some calls held images of several requests.
    batches = count_after - count_before
    assert batches < 40 and (batches - (ones_after - ones_before)) > 0


def _series(text: str, name: str, **labels: str) -> float:
    """The sum of one Prometheus series of /metrics's text over the samples with `labels` (0 when none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_bentoml_request_metrics_count_every_answer(client: httpx.Client, images: dict[str, bytes]) -> None:
    """`request_metrics` keeps BentoML's series: total and duration per endpoint and status, counted
    once the answer is sent; nothing left in progress."""
    names = ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_count")

    def counts() -> dict[tuple[str, str], float]:
        text = client.get("/metrics").text
        return {
            (n, code): _series(text, n, endpoint="/predict", http_response_code=code)
            for n in names
            for code in ("200", "400")
        }

    before = counts()
    for _ in range(3):
        assert predict(client, upload(("red.jpg", images["red.jpg"]))).status_code == 200
    assert predict(client, upload(("bad.jpg", b"not an image"))).status_code == 400
    after = counts()
    for name in names:
        assert after[(name, "200")] - before[(name, "200")] == 3
        assert after[(name, "400")] - before[(name, "400")] == 1
    text = client.get("/metrics").text
    assert _series(text, "bentoml_service_request_in_progress", endpoint="/predict") == 0
    assert _series(text, "bentoml_service_last_request_timestamp_seconds") > 0


def test_bentoml_client_can_call_predict(server: Server, images: dict[str, bytes], tmp_path: Path) -> None:
    import bentoml

    path = tmp_path / "red.jpg"
    path.write_bytes(images["red.jpg"])
    with bentoml.SyncHTTPClient(server.url) as bento:
        answer = bento.predict(images=[path], which="last", thresholds={"cat": 0.1})
    assert answer["which"] == "last" and answer["images"][0]["filename"] == "red.jpg"
    check_image_answer(answer["images"][0], [0.1, *THRESHOLDS["last"][1:]])


IN_PROCESS_SCRIPT = """
import asyncio, json, sys
from service.server.service import ManyLabel

async def main():
    service = ManyLabel()  # the BentoML service class, instantiated here: no HTTP involved
    out = []
    for call in (
        service.predict(images=[sys.argv[1]], which="last", thresholds={"cat": 0.1}),
        service.predict_bundle(images=[sys.argv[1]], format="csv"),
        service.predict(images=[sys.argv[1]], which="worst"),
        service.predict(images=[sys.argv[1]] * 6),
    ):
        r = await call
        out.append({"status": r.status_code, "headers": dict(r.headers), "body": r.body.decode()})
    service.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_api_methods_called_in_process_answer_as_http_does(
    client: httpx.Client, server: Server, images: dict[str, bytes], tmp_path: Path
) -> None:
    path = tmp_path / "red.jpg"
    path.write_bytes(images["red.jpg"])
    # One image waits 2 s for batch-mates and one may wait: the 6-image call must get a 503.
    env = {**server.env, "MANYLABEL_MAX_QUEUE": "1", "MANYLABEL_MAX_LATENCY_MS": "2000"}
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS_SCRIPT, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scored, bundle, unknown, overloaded = json.loads(done.stdout.strip().splitlines()[-1])

    http = predict(client, upload(("red.jpg", images["red.jpg"])), which="last", thresholds='{"cat": 0.1}')
    assert scored["status"] == 200 and json.loads(scored["body"]) == http.json()
    http_csv = client.post(
        "/predict_bundle", files=upload(("red.jpg", images["red.jpg"])), data={"format": "csv"}
    )
    assert bundle["status"] == 200 and bundle["body"] == http_csv.text
    assert bundle["headers"]["content-disposition"] == http_csv.headers["content-disposition"]
    assert unknown["status"] == 400 and json.loads(unknown["body"])["field"] == "which"
    assert overloaded["status"] == 503 and overloaded["headers"]["retry-after"] == "1"
    assert "images are waiting for inference" in json.loads(overloaded["body"])["error"]
