"""Precision over HTTP: a model with int8 variants serves int8 by default on CPU and fp32 on request,
every answer names its precision, and int8 asked of a model without it is a 400 naming `precision`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from servekit import LABELS, MODEL_NAME, REPO, SERVER_ENV, Server, image_bytes, serve_tiny_model

from service.manifest import Manifest
from service.preprocess import load_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model with real int8 variants, served with MANYLABEL_PRECISION unset (auto) on CPU."""
    with serve_tiny_model(tmp_path_factory.mktemp("int8"), SERVER_ENV, int8=True) as server:
        yield server


def predict(server: Server, image: bytes, route: str = "/predict", **fields: str) -> httpx.Response:
    files = [("images", ("a.jpg", image, "image/jpeg"))]
    return httpx.post(f"{server.url}{route}", files=files, data=fields, timeout=60)


def local_scores(server: Server, image: bytes, which: str, precision: str) -> list[float]:
    """The stored graph of `precision`, run here on the same decoded image."""
    folder = server.home / "models" / MODEL_NAME / server.tag.split(":")[1]
    manifest = Manifest.read(folder)
    path = folder / manifest.models[which].file_for(precision)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = load_image(image, manifest.preprocessing)[None]
    return session.run(None, {manifest.preprocessing.input_name: batch})[0][0].tolist()


def test_model_names_the_precisions_it_serves(int8_server: Server) -> None:
    body = httpx.get(f"{int8_server.url}/model", timeout=30).json()
    assert body["precision"] == {
        "requested": "auto",
        "default": {"best": "int8", "last": "int8"},
        "notes": {},
    }
    for which in ("best", "last"):
        model = body["models"][which]
        assert model["precisions"] == ["int8", "fp32"]  # the default first; fp32 on request
        int8 = model["variants"]["int8"]
        assert int8["kept"] and int8["file"] == f"{which}.int8.onnx" and int8["reason"] is None
        assert int8["calibration_images"] == 12 and int8["validation"]["images"] == 12
        assert 0 <= int8["validation"]["max_score_diff"] < 0.1


def test_int8_by_default_on_cpu_and_fp32_on_request(int8_server: Server) -> None:
    image = image_bytes(1)
    default = predict(int8_server, image)
    fp32 = predict(int8_server, image, precision="fp32")
    assert default.status_code == fp32.status_code == 200, (default.text, fp32.text)
    assert default.json()["precision"] == "int8" and fp32.json()["precision"] == "fp32"
    got = {p: list(r.json()["images"][0]["scores"].values()) for p, r in (("int8", default), ("fp32", fp32))}
    for precision, scores in got.items():  # each answer really comes from its own graph
        np.testing.assert_allclose(scores, local_scores(int8_server, image, "best", precision), atol=1e-6)
    assert got["int8"] != got["fp32"]
    last = predict(int8_server, image, which="last", precision="int8").json()
    assert (last["which"], last["precision"]) == ("last", "int8")


def test_bundle_takes_the_precision_field(int8_server: Server) -> None:
    r = predict(int8_server, image_bytes(2), route="/predict_bundle", format="json", precision="fp32")
    assert r.status_code == 200, r.text
    assert json.loads(r.content)["precision"] == "fp32"


def test_unknown_precision_is_a_400_naming_the_field(int8_server: Server) -> None:
    r = predict(int8_server, image_bytes(1), precision="fp16")
    assert r.status_code == 400
    body = r.json()
    assert body["field"] == "precision" and "fp16" in body["error"]


def test_int8_of_a_model_without_it_is_a_400_naming_precision(client: httpx.Client) -> None:
    files = [("images", ("a.jpg", image_bytes(1), "image/jpeg"))]
    assert client.post("/predict", files=files).json()["precision"] == "fp32"  # a pre-int8 model
    r = client.post("/predict", files=files, data={"precision": "int8"})
    assert r.status_code == 400
    body = r.json()
    assert body["field"] == "precision"
    assert "'int8' is not served" in body["error"] and "manylabel quantize" in body["error"]
    assert client.get("/model").json()["precision"]["default"] == {"best": "fp32", "last": "fp32"}


def test_cli_predict_precision(int8_server: Server, tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(image_bytes(3))
    answers = {}
    for precision in ("fp32", "int8"):
        cmd = [sys.executable, "-m", "service", "predict", "--model", MODEL_NAME, "--images", str(image)]
        cmd += ["--precision", precision, "--format", "json", "--output", "-"]
        done = subprocess.run(cmd, cwd=REPO, env=int8_server.env, check=True, capture_output=True)
        answers[precision] = json.loads(done.stdout)
    for precision, body in answers.items():
        assert body["precision"] == precision
        scores = [body["images"][0]["scores"][label] for label in LABELS]
        np.testing.assert_allclose(
            scores, local_scores(int8_server, image.read_bytes(), "best", precision), atol=1e-6
        )


def test_batch_sends_the_precision_and_pins_it_in_the_journal(int8_server: Server, tmp_path: Path) -> None:
    from service.batch.client import BatchOptions, run_batch
    from service.errors import BatchError

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(image_bytes(80 + i))
    scores = {}
    for precision in ("auto", "fp32", "int8"):
        out = tmp_path / precision
        assert (
            run_batch(
                BatchOptions(url=int8_server.url, images=folder, output=out, precision=precision)
            ).exit_code
            == 0
        )
        header = json.loads((out / "journal.jsonl").read_text().splitlines()[0])
        assert header["precision"] == (None if precision == "auto" else precision)  # auto: as before it
        result = json.loads((out / "predictions.json").read_text())
        scores[precision] = [[image["scores"][label] for label in LABELS] for image in result["images"]]
    for precision in ("fp32", "int8"):  # each from its own graph, as the service answers it
        for name, got in zip(sorted(p.name for p in folder.iterdir()), scores[precision], strict=True):
            want = local_scores(int8_server, (folder / name).read_bytes(), "best", precision)
            np.testing.assert_allclose(got, want, atol=1e-6)
    assert scores["auto"] == scores["int8"] != scores["fp32"]  # the service's default on CPU
    again = BatchOptions(url=int8_server.url, images=folder, output=tmp_path / "int8", precision="fp32")
    with pytest.raises(BatchError, match="written with precision='int8', this run asks for 'fp32'"):
        run_batch(again)


def test_batch_int8_of_a_model_without_it_is_refused_as_an_option(server: Server, tmp_path: Path) -> None:
    from service.batch.client import BatchOptions, run_batch
    from service.errors import BatchError

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(image_bytes(1))
    options = BatchOptions(url=server.url, images=folder, output=tmp_path / "out", precision="int8")
    with pytest.raises(BatchError, match="the service refused this run's options: HTTP 400"):
        run_batch(options)


def test_batch_precision_flag_reaches_the_options() -> None:
    from service.batch.cli import _options
    from service.cli import build_parser

    argv = ["batch", "--url", "http://x/", "--images", "i", "--output", "o"]
    assert _options(build_parser(argv).parse_args(argv)).precision == "auto"
    options = _options(build_parser(argv).parse_args([*argv, "--precision", "int8"]))
    assert options.precision == "int8" and options.form_fields() == {"which": "best", "precision": "int8"}
