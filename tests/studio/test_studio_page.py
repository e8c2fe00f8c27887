"""The studio page, end to end: real headless Chromium (Playwright) against a real `manylabel studio`
(conftest.py's `studio`, whose store already holds a tiny model). Create a dataset from the bundled
sample (the images and the labels CSV, picked as files), leave one label out, train a short job from
the Train view, follow the top bar to 100 %, open the new model's statistics.

A screenshot is taken at each step, into $MANYLABEL_SCREENSHOTS when set (to look at them), else
into the test's temp folder. Needs Chromium and Playwright's driver, as tests/ui/test_page.py does.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from studiokit import SERVED, StudioServer
from support.browser import chromium

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[2] / "training" / "sample"
TIMEOUT_MS = 30_000
JOB_TIMEOUT_MS = 420_000  # a few-second budget; features, start-up and export on a busy 2-core box
NAME = "studio-page"
LEFT_OUT = "skirt"
ENDED = "() => ['done', 'failed', 'cancelled'].includes(document.querySelector('#job-bar').dataset.state)"


def _expect():
    from playwright.sync_api import expect

    return expect


def sample_labels() -> dict[str, list[str]]:
    with open(SAMPLE / "labels.csv", newline="") as f:
        return {row[0]: row[1:] for row in csv.reader(f) if row}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as browser:
        yield browser


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MANYLABEL_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_upload_train_and_open_the_new_model(browser, studio: StudioServer, shots: Path) -> None:
    expect = _expect()
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    def shot(name: str, *, full: bool = False) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=full)

    try:
        # 1. The page: the studio's views are there; the model served before is listed.
        page.goto(f"{studio.url}/ui")
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("body")).to_have_attribute("data-studio", "true")
        expect(page.locator("[data-testid=model-row]")).to_have_count(1)
        expect(page.locator("[data-testid=model-row]")).to_contain_text(SERVED)
        shot("01-models")

        # 2. A new dataset: the sample's images and its labels CSV, previewed before upload.
        labels = sample_labels()
        images = sorted((SAMPLE / "images").iterdir())
        page.click(".nav a[data-view=datasets]")
        page.fill("[data-testid=dataset-name]", "clothes")
        page.set_input_files("[data-testid=dataset-images]", images)
        page.set_input_files("[data-testid=dataset-labels]", SAMPLE / "labels.csv")
        expect(page.locator("#dataset-preview .card")).to_have_count(len(images))
        first = page.locator(f'#dataset-preview .card[data-name="{images[0].name}"] .chip')
        expect(first).to_have_text(labels[images[0].name])
        shot("02-chosen", full=True)

        page.click("[data-testid=dataset-create]")
        expect(page.locator("#dataset-title")).to_have_text("clothes")
        counts = Counter(label for row in labels.values() for label in row)
        rows = page.locator("[data-testid=label-counts] tbody tr")
        expect(rows).to_have_count(len(counts))
        for label, n in counts.items():
            expect(page.locator(f'[data-testid=label-counts] tr[data-label="{label}"] td.num')).to_have_text(
                str(n)
            )
        expect(page.locator("#dataset-facts")).to_contain_text(f"Labelled{len(labels)}")
        expect(page.locator("#dataset-gallery .card")).to_have_count(min(24, len(images)))  # the first page
        expect(page.locator("[data-testid=lab-summary]")).to_contain_text(f"{len(images)} image(s)")
        shot("03-dataset", full=True)

        # 3. Train: one label left out; the estimate follows; start.
        page.uncheck(f'[data-testid=label-counts] input[data-label="{LEFT_OUT}"]')
        expect(page.locator("#labels-chosen")).to_have_text(
            f"{len(counts) - 1} of {len(counts)} label(s) will be trained"
        )
        page.click("#dataset-train")
        expect(page).to_have_url(re.compile(r"#train/\d+$"))
        page.fill("[data-testid=train-name]", NAME)
        page.fill("[data-testid=train-minutes]", "0.05")
        estimate = page.locator("#train-estimate")
        expect(estimate.locator(".chip")).to_have_count(len(counts) - 1)
        expect(estimate).not_to_contain_text(LEFT_OUT)
        expect(estimate).to_contain_text("44 to train, 11 to validate")
        page.click("#train-advanced summary")
        expect(page.locator("#train-val-size")).to_be_visible()
        shot("04-train", full=True)

        with page.expect_request(lambda r: urlsplit(r.url).path == "/jobs" and r.method == "POST") as sent:
            page.click("[data-testid=train-start]")
        body = sent.value.post_data_json
        assert body["name"] == NAME and body["exclude"] == [LEFT_OUT] and body["minutes"] == 0.05

        # 4. The top bar follows the job, on every view, to 100 %.
        progress = page.locator("[data-testid=job-progress]")
        expect(page.locator("#job-bar")).to_be_visible()
        expect(progress).to_have_text(re.compile(r"^\d+ %$"))
        page.wait_for_function("() => document.querySelector('#job-bar').dataset.state === 'running'")
        page.click(".nav a[data-view=datasets]")  # another view: the bar stays
        expect(page.locator("#job-bar")).to_be_visible()
        shot("05-running")
        page.wait_for_function(ENDED, timeout=JOB_TIMEOUT_MS)
        state = page.locator("#job-bar").get_attribute("data-state")
        assert state == "done", f"the job ended {state}: {page.locator('#job-detail').inner_text()}"
        expect(progress).to_have_text("100 %")
        shot("06-done")

        # 5. The new model: listed, and its statistics open with model= on every request.
        requests.clear()
        page.click("#job-open a")
        title = page.locator("#model-title")
        expect(title).to_have_text(re.compile(rf"^{NAME}:"))
        tag = title.inner_text()
        expect(page.locator("[data-testid=model-row]")).to_have_count(2)
        expect(page.locator(f'[data-testid=model-row][data-tag="{tag}"]')).to_have_class("openable selected")
        expect(page.locator("#label-table tbody tr")).to_have_count(len(counts) - 1)
        expect(page.locator("#label-table")).not_to_contain_text(LEFT_OUT)
        splits = httpx.get(f"{studio.url}/stats", params={"model": tag}, timeout=60).json()["splits"]
        for split in ("train", "validation"):
            images = str(splits[split]["images"])
            expect(page.locator(f'[data-cell="{split}:Images"]')).to_have_text(images)
        expect(page.locator("#curve-chart polyline.curve:not(.faint)")).to_have_count(1)
        expect(page.locator("#gallery .card")).to_have_count(min(24, splits["validation"]["images"]))
        shot("07-model", full=True)
        stats = [parse_qs(urlsplit(url).query) for url in requests if urlsplit(url).path == "/stats"]
        assert stats and all(q["model"] == [tag] for q in stats)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
