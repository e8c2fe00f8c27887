"""Every stored model is served: `model=NAME[:VERSION]` picks one, a version saved while the server
runs is served at once, GET /models lists them, and at most MANYLABEL_MAX_MODELS stay open."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from servekit import MODEL_NAME, Server, image_bytes, save_tiny_model, serve_tiny_model

pytestmark = pytest.mark.slow
ENV = {"MANYLABEL_PROVIDER": "cpu", "MANYLABEL_MAX_MODELS": "2"}  # no MANYLABEL_MODEL: the newest


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_tiny_model(tmp_path_factory.mktemp("many"), ENV) as server:
        yield server


def predict(server: Server, **fields: str) -> httpx.Response:
    files = [("images", ("a.jpg", image_bytes(1), "image/jpeg"))]
    return httpx.post(f"{server.url}/predict", files=files, data=fields, timeout=60)


def test_models_are_served_by_name_and_new_versions_without_a_restart(many: Server, tmp_path) -> None:
    first = predict(many).json()  # no model named: the store's newest at start
    assert f"{first['model']}:{first['version']}" == many.tag

    other = save_tiny_model(tmp_path, many.env, name="other-model", seed=7)  # saved while serving
    answer = predict(many, model="other-model").json()
    assert f"{answer['model']}:{answer['version']}" == other
    assert answer["images"][0]["scores"] != first["images"][0]["scores"]  # another head, other scores
    assert predict(many, model=other).json()["version"] == answer["version"]

    newer = save_tiny_model(tmp_path, many.env, name=MODEL_NAME, seed=11)  # a new version of the first
    assert f"{MODEL_NAME}:{predict(many, model=MODEL_NAME).json()['version']}" == newer
    assert predict(many, model=many.tag).json()["version"] == many.tag.split(":")[1]  # pinned version

    listed = httpx.get(f"{many.url}/models", timeout=30).json()
    tags = [row["tag"] for row in listed["models"]]
    assert tags[0] == newer and set(tags) == {many.tag, other, newer}  # newest first
    row = listed["models"][0]
    assert row["labels"] and {"best", "last"} <= set(row["validation"]) and row["precisions"][0] == "fp32"
    assert sum(row["loaded"] for row in listed["models"]) <= 2  # MANYLABEL_MAX_MODELS
    assert listed["default"] == many.tag

    summary = httpx.get(f"{many.url}/model", params={"model": other}, timeout=30).json()
    assert summary["tag"] == other
    stats = httpx.get(f"{many.url}/thresholds", params={"model": other}, timeout=30)
    assert stats.status_code in (200, 404)  # the tiny model has no records: 404 names that, never 500


def test_an_unknown_model_is_a_404_naming_the_field(many: Server) -> None:
    r = predict(many, model="no-such-model")
    assert r.status_code == 404 and r.json()["field"] == "model"
    assert "no-such-model" in r.json()["error"]
    r = httpx.get(f"{many.url}/model", params={"model": "no-such-model"}, timeout=30)
    assert r.status_code == 404 and r.json()["field"] == "model"
