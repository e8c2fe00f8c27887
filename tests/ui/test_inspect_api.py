"""HTTP tests of the inspect API mounted in the service: each endpoint's answers and refusals.

Against the session's real `bentoml serve` (conftest.py), which has MANYLABEL_API_TOKEN set. Numbers
are checked against plain numpy on the records the tiny model was built from.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from kit import (
    LABELS,
    MISSING_THUMBNAIL,
    N_TRAIN,
    N_VALIDATION,
    NAMES,
    THRESHOLDS,
    Server,
    image_bytes,
    records,
    save_to_store,
)

pytestmark = pytest.mark.slow  # a server per session

DATA = records()


def _expect_error(response: httpx.Response, status: int, field: str | None, words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "field", "file"}, body  # the one shape: never FastAPI's {"detail": ...}
    assert body["field"] == field, body
    assert words in body["error"], body
    return body


def _precision_recall(split: str, which: str, thresholds) -> tuple[np.ndarray, np.ndarray]:
    rows = DATA["split"] == split
    y = DATA["y_true"][rows].astype(bool)
    above = DATA[f"scores_{which}"][rows] >= np.asarray(thresholds)
    tp, fp, fn = (above & y).sum(0), (above & ~y).sum(0), (~above & y).sum(0)
    return tp / np.maximum(tp + fp, 1), tp / np.maximum(tp + fn, 1)


# --- /stats -----------------------------------------------------------------------------------------


def test_stats_gives_train_and_validation_at_the_optimised_thresholds(client: httpx.Client) -> None:
    r = client.get("/stats")
    assert r.status_code == 200
    body = r.json()
    assert body["which"] == "best" and body["profile"] == "optimized" and body["overridden"] == []
    assert body["thresholds"] == dict(zip(LABELS, THRESHOLDS["best"], strict=True))
    assert body["splits"]["train"]["images"] == N_TRAIN
    assert body["splits"]["validation"]["images"] == N_VALIDATION
    precision, recall = _precision_recall("validation", "best", THRESHOLDS["best"])
    for j, label in enumerate(LABELS):
        got = body["splits"]["validation"]["per_label"][label]
        assert got["precision"] == pytest.approx(precision[j]) and got["recall"] == pytest.approx(recall[j])
        c = body["splits"]["validation"]["confusion"][label]
        assert sum(c.values()) == N_VALIDATION


def test_stats_follow_a_threshold_override(client: httpx.Client) -> None:
    body = client.get("/stats", params={"thresholds": json.dumps({"cat": 0.05}), "which": "last"}).json()
    assert body["which"] == "last" and body["overridden"] == ["cat"]
    assert body["thresholds"]["cat"] == 0.05 and body["thresholds"]["dog"] == THRESHOLDS["last"][1]
    precision, recall = _precision_recall("train", "last", [0.05, *THRESHOLDS["last"][1:]])
    got = body["splits"]["train"]["per_label"]["cat"]
    assert got["precision"] == pytest.approx(precision[0]) and got["recall"] == pytest.approx(recall[0])
    default = client.get("/stats", params={"which": "last"}).json()
    assert default["splits"]["train"]["per_label"]["cat"] != got


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"split": "test"}, "split", "'test' is not one of ['train', 'validation']"),
        ({"profile": "lenient"}, "profile", "'lenient' is not one of"),
        ({"which": "middle"}, "which", "'middle' is not one of ['best', 'last']"),
        ({"threshold": "1.5"}, "threshold", "outside [0, 1]"),
        ({"threshold": "-0.1"}, "threshold", "outside [0, 1]"),
        ({"threshold": "nan"}, "threshold", "outside [0, 1]"),
        ({"threshold": "high"}, "threshold", "is not a number"),
        ({"thresholds": '{"zebra": 0.3}'}, "thresholds", "unknown label 'zebra'"),
        ({"thresholds": '{"cat": NaN}'}, "thresholds", "outside [0, 1]"),
        ({"thresholds": "[0.3]"}, "thresholds", "is not a JSON object"),
        ({"filter": "all"}, "filter", "unknown parameter; expected ['model', 'profile', 'split', 'thr"),
    ],
)
def test_stats_refuses_bad_parameters(client: httpx.Client, params: dict, field: str, words: str) -> None:
    _expect_error(client.get("/stats", params=params), 400, field, words)


def test_a_parameter_given_twice_is_refused(client: httpx.Client) -> None:
    _expect_error(client.get("/stats?threshold=0.3&threshold=0.4"), 400, "threshold", "more than once")


# --- /pr_curve --------------------------------------------------------------------------------------


def test_pr_curve_of_all_labels_and_of_one(client: httpx.Client) -> None:
    every = client.get("/pr_curve", params={"split": "train"}).json()
    assert every["split"] == "train" and every["label"] is None
    assert set(every["per_label"]) == set(LABELS)
    assert every["all"]["operating_point"]["threshold"] == 0.5  # best: one value for every label
    one = client.get("/pr_curve", params={"label": "dog", "max_points": 5, "threshold": 0.3}).json()
    assert one["all"] is None and list(one["per_label"]) == ["dog"]
    curve = one["per_label"]["dog"]
    assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) <= 6
    assert curve["thresholds"][-1] is None  # the last point predicts nothing
    precision, recall = _precision_recall("validation", "best", [0.3] * 3)
    assert curve["operating_point"]["threshold"] == 0.3
    assert curve["operating_point"]["precision"] == pytest.approx(precision[1])
    assert curve["operating_point"]["recall"] == pytest.approx(recall[1])


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"label": "zebra"}, "label", "unknown label 'zebra'"),
        ({"max_points": "2"}, "max_points", "not in [3, 5000]"),
        ({"max_points": "many"}, "max_points", "not an integer"),
        ({"split": "holdout"}, "split", "is not one of"),
        ({"profile": "strict"}, "profile", "is not one of"),
    ],
)
def test_pr_curve_refuses_bad_parameters(client: httpx.Client, params: dict, field: str, words: str) -> None:
    _expect_error(client.get("/pr_curve", params=params), 400, field, words)


# --- /predictions -----------------------------------------------------------------------------------


def _total(client: httpx.Client, **params: str) -> int:
    r = client.get("/predictions", params={"page_size": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def test_prediction_filters_partition_the_split(client: httpx.Client) -> None:
    for split, n in (("train", N_TRAIN), ("validation", N_VALIDATION)):
        assert _total(client, split=split) == n
        assert (
            _total(client, split=split, filter="correct") + _total(client, split=split, filter="incorrect")
            == n
        )
        assert _total(client, split=split, filter="above") + _total(client, split=split, filter="below") == n
    # one label narrows the filter to that label's decision
    rows = DATA["split"] == "validation"
    wrong = (DATA["scores_best"][rows][:, 1] >= 0.5) != DATA["y_true"][rows][:, 1].astype(bool)
    assert _total(client, filter="incorrect", label="dog") == int(wrong.sum())


def test_prediction_items_in_basic_and_advanced_view(client: httpx.Client) -> None:
    body = client.get("/predictions", params={"filter": "incorrect", "view": "basic"}).json()
    assert body["items"] and all(not item["correct"] for item in body["items"])
    assert all("labels" not in item for item in body["items"])
    advanced = client.get("/predictions", params={"page_size": 3, "view": "advanced"}).json()
    item = advanced["items"][0]
    assert item["name"] == NAMES[N_TRAIN] and item["split"] == "validation"
    row = N_TRAIN
    for j, label in enumerate(LABELS):
        entry = item["labels"][label]
        assert entry["score"] == pytest.approx(float(DATA["scores_best"][row, j]))
        assert entry["threshold"] == 0.5 and entry["true"] == bool(DATA["y_true"][row, j])
        assert entry["above"] == (entry["score"] >= 0.5)
    assert item["true"] == [lab for j, lab in enumerate(LABELS) if DATA["y_true"][row, j]]


def test_predictions_are_paged(client: httpx.Client) -> None:
    pages = [client.get("/predictions", params={"page_size": 7, "page": p}).json() for p in (1, 2, 3, 4)]
    assert pages[0]["pages"] == 3 and pages[0]["total"] == N_VALIDATION
    names = [item["name"] for page in pages for item in page["items"]]
    assert names == NAMES[N_TRAIN:] and pages[3]["items"] == []


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"filter": "wrongish"}, "filter", "'wrongish' is not one of"),
        ({"label": "zebra"}, "label", "unknown label"),
        ({"sort": "random"}, "sort", "is not one of"),
        ({"order": "sideways"}, "order", "is not one of"),
        ({"view": "fancy"}, "view", "is not one of"),
        ({"page": "0"}, "page", ">= 1"),
        ({"page_size": "501"}, "page_size", "[1, 500]"),
        ({"page": "two"}, "page", "not an integer"),
        ({"split": "test"}, "split", "is not one of"),
        ({"threshold": "2"}, "threshold", "outside [0, 1]"),
    ],
)
def test_predictions_refuse_bad_parameters(
    client: httpx.Client, params: dict, field: str, words: str
) -> None:
    _expect_error(client.get("/predictions", params=params), 400, field, words)


# --- /diff, /pairs, /mislabelled --------------------------------------------------------------------


def test_diff_pairs_and_mislabelled_answer(client: httpx.Client) -> None:
    diff = client.get("/diff", params={"split": "train", "limit": 2}).json()
    assert diff["split"] == "train" and set(diff["per_label"]) == set(LABELS)
    pairs = client.get("/pairs", params={"top": 2}).json()
    assert len(pairs["co_occurring"]) <= 2 and set(pairs) >= {"confused", "co_occurring"}
    mis = client.get("/mislabelled", params={"limit": 3, "min_gap": 0.6}).json()
    assert len(mis["items"]) == 3 and all(item["gap"] >= 0.6 for item in mis["items"])


@pytest.mark.parametrize(
    ("path", "params", "field", "words"),
    [
        ("/diff", {"limit": "-1"}, "limit", ">= 0"),
        ("/diff", {"split": "test"}, "split", "is not one of"),
        ("/pairs", {"top": "x"}, "top", "not an integer"),
        ("/mislabelled", {"min_gap": "2"}, "min_gap", "not in [0, 1]"),
        ("/mislabelled", {"which": "first"}, "which", "is not one of"),
        ("/mislabelled", {"limit": "501"}, "limit", "[0, 500]"),
        ("/diff", {"limit": "501"}, "limit", "[0, 500]"),
        ("/mislabelled", {"limit": "many"}, "limit", "not an integer"),
    ],
)
def test_other_views_refuse_bad_parameters(
    client: httpx.Client, path: str, params: dict, field: str, words: str
) -> None:
    _expect_error(client.get(path, params=params), 400, field, words)


def test_wrong_method_is_json_405(client: httpx.Client) -> None:
    r = client.delete("/stats")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed", "field": None}


ROUTES = ["/stats", "/pr_curve", "/predictions", "/diff", "/pairs", "/mislabelled", "/thresholds"]


@pytest.mark.parametrize("path", [*ROUTES, f"/image/train/{quote(NAMES[0])}"])
def test_model_names_the_served_model(client: httpx.Client, path: str) -> None:
    served = client.get("/model").json()
    for model in (served["name"], f"{served['name']}:{served['version']}"):
        r = client.get(path, params={"model": model})
        assert r.status_code == 200, (model, r.text)
    for model in ("other-model", f"{served['name']}:0000", "best"):  # best | last is `which` now
        refused = client.get(path, params={"model": model})
        _expect_error(refused, 404, "model", "not in the BentoML model store")


def test_docs_list_the_inspect_routes_with_their_parameters(client: httpx.Client) -> None:
    r = client.get("/docs.json")
    assert r.status_code == 200, r.text
    paths = r.json()["paths"]
    viewed = {"model", "which", "split", "profile", "threshold", "thresholds"}  # a model at thresholds
    expected = {
        "/stats": viewed,
        "/pr_curve": viewed | {"label", "max_points"},
        "/predictions": viewed | {"filter", "label", "sort", "order", "page", "page_size", "view"},
        "/diff": {"model", "split", "profile", "limit"},
        "/pairs": viewed | {"top"},
        "/mislabelled": {"model", "which", "split", "limit", "min_gap"},
        "/thresholds": {"model"},
    }
    for path, names in expected.items():
        listed = {p["name"] for p in paths[path]["get"]["parameters"] if p["in"] == "query"}
        assert names <= listed, (path, listed)
        assert "422" not in paths[path]["get"]["responses"]  # refusals are 4xx {"error", "field"}
    split = next(p for p in paths["/predictions"]["get"]["parameters"] if p["name"] == "split")
    assert split["schema"]["enum"] == ["train", "validation"]
    body = paths["/thresholds"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"which", "set", "all", "reset"}


# --- /image -----------------------------------------------------------------------------------------


def _image_url(split: str, name: str) -> str:
    return f"/image/{split}/{quote(name)}"


def test_thumbnails_by_name_with_cache_headers(client: httpx.Client) -> None:
    for name, split in ((NAMES[0], "train"), (NAMES[N_TRAIN], "validation"), (NAMES[-1], "validation")):
        r = client.get(_image_url(split, name))
        assert r.status_code == 200, (name, r.text)
        assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
        assert "max-age=" in r.headers["cache-control"] and r.headers["etag"]
    again = client.get(_image_url("train", NAMES[0]), headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 200  # another image's ETag
    first = client.get(_image_url("train", NAMES[0]))
    cached = client.get(_image_url("train", NAMES[0]), headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""


@pytest.mark.parametrize(
    ("url", "status", "field", "words"),
    [
        ("/image/validation/no-such.jpg", 404, "name", "no validation image is named 'no-such.jpg'"),
        (f"/image/validation/{quote(NAMES[0])}", 404, "name", "no validation image"),  # a train image
        (
            "/image/train/..%2F..%2Fmanifest.json",
            404,
            "name",
            "no train image is named '../../manifest.json'",
        ),
        ("/image/train/%2Fetc%2Fpasswd", 404, "name", "no train image"),
        (f"/image/train/{quote(MISSING_THUMBNAIL)}", 404, "name", "has no thumbnail"),
        ("/image/test/a.jpg", 400, "split", "'test' is not one of"),
        ("/image/train/a%01b.jpg", 400, "name", "not an image name"),
    ],
)
def test_thumbnail_refusals(client: httpx.Client, url: str, status: int, field: str, words: str) -> None:
    _expect_error(client.get(url), status, field, words)


# --- /ui --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type", "words"),
    [
        ("/ui", "text/html", "<title>manylabel</title>"),
        ("/ui/", "text/html", "<title>manylabel</title>"),
        ("/ui/index.html", "text/html", 'src="/ui/app.js"'),
        ("/ui/app.js", "text/javascript", "import"),
        ("/ui/chart.js", "text/javascript", "export function drawCurve"),
        ("/ui/style.css", "text/css", ":root"),
    ],
)
def test_page_files(client: httpx.Client, path: str, media_type: str, words: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
    assert words in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]  # nothing from elsewhere
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/missing.js",
        "/ui/%2E%2E%2Finspect.py",
        "/ui/..%2Fservice.py",
        "/ui/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/ui/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "/ui/%2Fetc%2Fpasswd",
        "/ui/ui",
        "/ui/a/b",
    ],
)
def test_page_serves_only_its_own_files(client: httpx.Client, path: str) -> None:
    _expect_error(client.get(path), 404, "file", "no page file named")


# --- /thresholds ------------------------------------------------------------------------------------


def test_get_thresholds_shows_the_state(client: httpx.Client) -> None:
    body = client.get("/thresholds").json()
    assert body["custom"] == {"best": {}, "last": {}} and body["updated_at"] is None
    assert body["thresholds"]["last"] == dict(zip(LABELS, THRESHOLDS["last"], strict=True))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dWk6dGVzdA=="},
        {"Authorization": "Bearer"},
    ],
)
def test_changing_thresholds_needs_the_token(client: httpx.Client, headers: dict) -> None:
    r = client.post("/thresholds", json={"all": 0.3}, headers=headers)
    body = _expect_error(r, 401, "authorization", "Authorization: Bearer <token>")
    assert r.headers["www-authenticate"] == "Bearer" and "ui-test-token" not in body["error"]
    assert client.get("/thresholds").json()["custom"] == {"best": {}, "last": {}}


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ('{"set": {"cat": 1.5}}', 400, "set", "outside [0, 1]"),
        ('{"set": {"cat": NaN}}', 400, "set", "outside [0, 1]"),
        ('{"set": {"zebra": 0.3}}', 400, "set", "unknown label 'zebra'"),
        ('{"set": {"cat": "0.3"}}', 400, "set", "is not a number"),
        ('{"set": {}}', 400, "set", "name at least one label"),
        ('{"all": -1}', 400, "all", "outside [0, 1]"),
        ('{"all": true}', 400, "all", "is not a number"),
        ('{"which": "middle", "all": 0.3}', 400, "which", "is not one of"),
        ('{"model": "best", "all": 0.3}', 400, "model", "unknown fields ['model']; use which"),
        ('{"reset": "cat"}', 400, "reset", "give true or a list of labels"),
        ('{"reset": ["zebra"]}', 400, "reset", "unknown labels"),
        ("{}", 400, "body", "exactly one of set, all, reset"),
        ('{"all": 0.3, "reset": true}', 400, "body", "exactly one of"),
        ('{"everything": 0.3}', 400, "everything", "unknown fields"),
        ("[0.3]", 400, "body", "expected a JSON object"),
        ("{not json", 400, "body", "not valid JSON"),
    ],
)
def test_threshold_changes_are_validated(
    client: httpx.Client, auth: dict, body: str, status: int, field: str, words: str
) -> None:
    r = client.post("/thresholds", content=body, headers={**auth, "Content-Type": "application/json"})
    _expect_error(r, status, field, words)
    assert client.get("/thresholds").json()["custom"] == {"best": {}, "last": {}}


def test_threshold_changes_must_be_json(client: httpx.Client, auth: dict) -> None:
    r = client.post("/thresholds", data={"all": "0.3"}, headers=auth)  # an HTML form's encoding
    _expect_error(r, 415, "body", "Content-Type: application/json")
    big = '{"set": {"cat": 0.3}, "pad": "' + "x" * (70 << 10) + '"}'
    r = client.post("/thresholds", content=big, headers={**auth, "Content-Type": "application/json"})
    _expect_error(r, 413, "body", "larger than")


def _predict(url: str, **fields: str) -> dict:
    files = [("images", ("a.jpg", image_bytes(1))), ("images", ("b.png", image_bytes(2, fmt="PNG")))]
    r = httpx.post(f"{url}/predict", files=files, data=fields, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_saved_thresholds_become_the_default_everywhere(
    server: Server, client: httpx.Client, auth: dict
) -> None:
    try:
        zeros = dict.fromkeys(LABELS, 0.0)
        r = client.post("/thresholds", json={"which": "best", "set": zeros}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["custom"]["best"] == dict.fromkeys(LABELS, 0.0)
        answer = _predict(server.url)
        assert all(image["thresholds"] == dict.fromkeys(LABELS, 0.0) for image in answer["images"])
        assert all(image["predicted"] == LABELS for image in answer["images"])  # every score >= 0
        assert _predict(server.url, which="last")["images"][0]["thresholds"]["cat"] == THRESHOLDS["last"][0]
        assert (
            _predict(server.url, threshold="1")["images"][0]["predicted"] == []
        )  # a request still overrides
        stats = client.get("/stats").json()
        assert stats["profile"] == "custom" and stats["thresholds"] == dict.fromkeys(LABELS, 0.0)
        assert client.get("/stats", params={"profile": "optimized"}).json()["thresholds"]["cat"] == 0.5

        r = client.post("/thresholds", json={"reset": ["cat"]}, headers=auth)
        assert r.json()["custom"]["best"] == {"dog": 0.0, "bird": 0.0}
        assert _predict(server.url)["images"][0]["thresholds"] == {"cat": 0.5, "dog": 0.0, "bird": 0.0}
    finally:
        client.post("/thresholds", json={"reset": True}, headers=auth)
    assert client.get("/thresholds").json()["custom"] == {"best": {}, "last": {}}
    assert _predict(server.url)["images"][0]["thresholds"] == dict(
        zip(LABELS, THRESHOLDS["best"], strict=True)
    )


def test_saved_thresholds_survive_a_restart(tmp_path: Path, model_dir: Path) -> None:
    home = tmp_path / "bentoml_home"
    save_to_store(model_dir, home)
    first = Server.start(home, tmp_path / "first.log")  # no token configured: no Authorization needed
    try:
        r = httpx.post(f"{first.url}/thresholds", json={"which": "both", "set": {"dog": 0.125}})
        assert r.status_code == 200, r.text
    finally:
        first.stop()
    second = Server.start(home, tmp_path / "second.log")
    try:
        state = httpx.get(f"{second.url}/thresholds").json()
        assert state["custom"] == {"best": {"dog": 0.125}, "last": {"dog": 0.125}}
        assert _predict(second.url)["images"][0]["thresholds"] == {"cat": 0.5, "dog": 0.125, "bird": 0.5}
        assert _predict(second.url, which="last")["images"][1]["thresholds"]["dog"] == 0.125
        stats = httpx.get(f"{second.url}/stats", params={"split": "validation"}).json()
        assert stats["profile"] == "custom" and stats["thresholds"]["dog"] == 0.125
    finally:
        second.stop()
