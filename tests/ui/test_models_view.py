"""The trained-models list and the model picker, in Chromium: the list shows the store's models, and
opening one shows its views with `model=NAME:VERSION` on every request the page makes for them.

Against the session's server (one model), and against a second server of this module with two
models, where the picker has something to switch between.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from kit import LABELS, N_TRAIN, N_VALIDATION, Server, image_bytes, save_to_store
from test_page import chromium, open_page

from service.manifest import Manifest

pytestmark = pytest.mark.slow

OTHER = "tiny-other"  # the second model: the same records, its own name and best thresholds
OTHER_BEST = [0.3, 0.3, 0.3]
# The routes that show one model: each must say which.
MODEL_ROUTES = {"/model", "/thresholds", "/stats", "/pr_curve", "/predictions"}


def _expect():
    from playwright.sync_api import expect

    return expect


def _asked(requests: list[str], base: str) -> list[tuple[str, dict[str, list[str]]]]:
    """(path, query) of each request the page made to the server for one model's views."""
    out = []
    for url in requests:
        parts = urlsplit(url)
        if url.startswith(base) and (parts.path in MODEL_ROUTES or parts.path.startswith("/image/")):
            out.append((parts.path, parse_qs(parts.query)))
    return out


def _models_of(requests: list[str], base: str) -> set[str | None]:
    return {(q.get("model") or [None])[0] for _, q in _asked(requests, base)}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, model_dir: Path) -> Iterator[tuple[Server, str, str]]:
    """A server over a store with the session's tiny-ui and `OTHER` (saved second: the newest)."""
    root = tmp_path_factory.mktemp("ui-two-models")
    other = root / "other"
    shutil.copytree(model_dir, other)
    manifest = Manifest.read(other)
    best = manifest.models["best"].model_copy(update={"thresholds": OTHER_BEST})
    manifest.model_copy(update={"name": OTHER, "models": {**manifest.models, "best": best}}).write(other)
    home = root / "bentoml_home"
    first = save_to_store(model_dir, home)
    second = save_to_store(other, home)
    server = Server.start(home, root / "server.log")
    try:
        yield server, first, second
    finally:
        server.stop()


def test_the_list_shows_the_served_model_and_every_view_names_it(browser, server: Server) -> None:
    expect = _expect()
    listing = httpx.get(f"{server.url}/models", timeout=30).json()
    tag = listing["default"]
    (model,) = listing["models"]
    requests: list[str] = []
    with open_page(browser, f"{server.url}/ui", requests=requests) as page:
        # a plain `bentoml serve` has no studio (GET /datasets answers 404): its views stay hidden
        expect(page.locator("body")).to_have_attribute("data-studio", "false")
        for view in ("datasets", "train"):
            expect(page.locator(f".nav a[data-view={view}]")).to_be_hidden()
        expect(page.locator("#job-bar")).to_be_hidden()
        rows = page.locator("[data-testid=models-list] [data-testid=model-row]")
        expect(rows).to_have_count(1)
        row = rows.first
        expect(row).to_have_attribute("data-tag", tag)
        expect(row).to_contain_text(model["name"])
        expect(row).to_contain_text(model["version"])
        expect(row).to_contain_text(f"{100 * model['validation']['best']['map']:.1f}%")
        expect(row).to_contain_text(f"{100 * model['validation']['last']['micro_f1']:.1f}%")
        expect(row).to_contain_text("default")
        expect(row).to_have_class("openable selected")
        expect(page.locator("#model-title")).to_have_text(tag)
        expect(page.locator('[data-cell="validation:Images"]')).to_have_text(str(N_VALIDATION))
        expect(page.locator("#gallery .card img").first).to_have_js_property("complete", True)

        row.locator("a").click()  # choosing it: the address names it, the views stay on it
        expect(page).to_have_url(f"{server.url}/ui#models/{quote(tag, safe='')}")
        expect(page.locator("#upload-model")).to_have_value(tag)

    paths = {path for path, _ in _asked(requests, server.url)}
    assert paths >= MODEL_ROUTES and any(path.startswith("/image/") for path in paths)
    assert _models_of(requests, server.url) == {tag}, "a model view was asked for without model="


def test_an_address_with_a_model_opens_that_model(browser, server: Server) -> None:
    expect = _expect()
    tag = httpx.get(f"{server.url}/models", timeout=30).json()["default"]
    requests: list[str] = []
    with open_page(browser, f"{server.url}/ui#models/{quote(tag, safe='')}", requests=requests) as page:
        expect(page.locator(".nav a[data-view=models]")).to_have_class("current")
        expect(page.locator('[data-cell="train:Images"]')).to_have_text(str(N_TRAIN))
        expect(page.locator("#curve-chart polyline.curve:not(.faint)")).to_have_count(1)
    stats = [q for path, q in _asked(requests, server.url) if path == "/stats"]
    assert stats and all(q["model"] == [tag] for q in stats)


def test_choosing_another_model_shows_its_statistics(browser, two_models) -> None:
    expect = _expect()
    server, first, second = two_models
    listing = httpx.get(f"{server.url}/models", timeout=30).json()
    assert [m["tag"] for m in listing["models"]] == [second, first]  # newest first
    requests: list[str] = []
    with open_page(browser, f"{server.url}/ui", requests=requests) as page:
        rows = page.locator("[data-testid=model-row]")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_have_attribute("data-tag", second)
        expect(page.locator("#model-title")).to_have_text(listing["default"])
        expect(page.locator('[data-cell="t:cat"]')).to_have_text("0.500")
        expect(page.locator("#upload-model option")).to_have_count(2)
        # The first model's views finish loading before the switch: its gallery could answer after
        # `requests.clear()` (the switch aborts it only three round trips after the click), and its
        # thumbnails, rightly named for it, would then count as asked for after choosing the second.
        expect(page.locator("#gallery .card")).to_have_count(N_VALIDATION)
        page.wait_for_load_state("networkidle")

        requests.clear()
        chosen = page.locator(f'[data-testid=model-row][data-tag="{second}"]')
        chosen.click()
        expect(page.locator("#model-title")).to_have_text(second)
        expect(chosen).to_have_class("openable selected")
        expect(page.locator("#model-facts")).to_contain_text(OTHER)
        expect(page.locator('[data-cell="t:cat"]')).to_have_text("0.300")  # its own thresholds
        expect(page.locator('[data-cell="validation:Images"]')).to_have_text(str(N_VALIDATION))
        expect(page.locator('#threshold-list [data-label="dog"]')).to_have_text("dog 0.300")
        expect(page.locator("#gallery .card")).to_have_count(N_VALIDATION)
        expect(page.locator("#upload-model")).to_have_value(second)
        stats = [q for path, q in _asked(requests, server.url) if path == "/stats"]
        assert stats and stats[-1]["model"] == [second]
        other = [url for url in requests if _models_of([url], server.url) - {second}]
        assert not other, f"asked for another model after choosing {second}: {other}"

        # New predictions: the select picks the model, whose thresholds (0.5 vs 0.3) the answer uses
        page.set_input_files(
            "#file-input", [{"name": "one.jpg", "mimeType": "image/jpeg", "buffer": image_bytes(5)}]
        )
        bars = page.locator("#results .card .bar")
        for tag, threshold in ((first, 0.5), (second, OTHER_BEST[0])):
            page.select_option("#upload-model", tag)
            page.click("#predict-btn")
            expect(page.locator("#results-summary")).to_contain_text(f"scored by the best model of {tag}")
            expect(bars).to_have_count(len(LABELS))
            for j in range(len(LABELS)):
                expect(bars.nth(j)).to_have_attribute("title", re.compile(rf"threshold {threshold:.3f}$"))
