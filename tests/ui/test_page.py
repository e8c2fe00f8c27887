"""The page, end to end: real headless Chromium (Debian's `chromium`, driven by Playwright) against the
session's real `bentoml serve` (conftest.py).

Needs, installed by the project's setup and never by these tests:
    apt-get install -y chromium           # /usr/bin/chromium; MANYLABEL_CHROMIUM=... for another path
    .venv/bin/pip install playwright      # the Python driver only: never `playwright install`
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from kit import LABELS, N_TRAIN, N_VALIDATION, TOKEN, Server, image_bytes
from support.browser import chromium

pytestmark = pytest.mark.slow

TIMEOUT_MS = 15_000




@contextmanager
def open_page(browser, url: str, *, requests: list[str] | None = None) -> Iterator:
    """The page at `url`, wired (body[data-ready]); the URLs it asks for go to `requests`, and any
    JavaScript error fails the test when the page closes."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server: Server) -> Iterator:
    with open_page(browser, f"{server.url}/ui") as page:
        yield page


def _expect():
    from playwright.sync_api import expect

    return expect


def _api(server: Server, path: str, **params) -> dict:
    r = httpx.get(f"{server.url}{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _click_curve_point(page, point: dict) -> None:
    """Click where the page draws `point` (recall, precision) of the curve."""
    at = page.evaluate("async (p) => (await import('/ui/chart.js')).position(p)", point)
    page.locator("#curve-chart").scroll_into_view_if_needed()  # the mouse clicks in the viewport only
    box = page.locator("#curve-chart").bounding_box()
    page.mouse.click(box["x"] + at["x"] * box["width"], box["y"] + at["y"] * box["height"])


# --- statistics and the curve -----------------------------------------------------------------------


def test_page_shows_the_model_and_its_statistics(page) -> None:
    expect = _expect()
    expect(page.locator("#model-title")).to_contain_text("tiny-ui:")
    expect(page.locator("#model-facts")).to_contain_text("CPUExecutionProvider")
    expect(page.locator("#label-table tbody tr")).to_have_count(len(LABELS))
    expect(page.locator('[data-cell="train:Images"]')).to_have_text(str(N_TRAIN))
    expect(page.locator('[data-cell="validation:Images"]')).to_have_text(str(N_VALIDATION))
    expect(page.locator("#stats-labels tbody tr")).to_have_count(len(LABELS))
    expect(page.locator('[data-cell="t:cat"]')).to_have_text("0.500")
    expect(page.locator("#stats-profile")).to_have_text("optimised thresholds")
    expect(page.locator("#curve-chart polyline.curve:not(.faint)")).to_have_count(1)
    expect(page.locator("#curve-chart .operating-point .dashed")).to_have_count(2)

    page.check('input[name="which"][value="last"]')  # every panel follows the best/last switch
    expect(page.locator('[data-cell="t:cat"]')).to_have_text("0.400")
    expect(page.locator('#threshold-list [data-label="dog"]')).to_have_text("dog 0.600")
    expect(page.locator("#upload-which")).to_have_value("last")


def test_a_click_on_the_curve_sets_the_threshold_and_the_statistics_follow(page, server: Server) -> None:
    expect = _expect()
    precision_cell = page.locator('[data-cell="validation:cat:precision"]')
    expect(precision_cell).not_to_have_text("")
    before = precision_cell.inner_text()
    page.select_option("#curve-label", "cat")
    page.uncheck("#use-optimized")
    curve = _api(server, "/pr_curve", label="cat", split="validation", max_points=300)["per_label"]["cat"]
    points = [
        {"recall": r, "precision": p, "threshold": t}
        for r, p, t in zip(curve["recall"], curve["precision"], curve["thresholds"], strict=True)
        if t is not None
    ]
    target = min(points, key=lambda p: p["threshold"])  # the lowest cut: everything is cat
    _expect()(page.locator("#curve-point")).to_contain_text("cat on validation")
    _expect()(page.locator("#busy")).to_be_hidden()  # the curve is drawn: nothing in flight
    _click_curve_point(page, target)

    expect(page.locator("#threshold-input")).to_have_value(f"{target['threshold']:.4f}")
    expect(page.locator('#threshold-list [data-label="cat"]')).to_have_class("chip unsaved selected")
    expect(page.locator("#stats-profile")).to_have_text("unsaved changes")
    expect(page.locator('[data-cell="t:cat"]')).to_have_text(f"{target['threshold']:.3f}")
    expect(precision_cell).not_to_have_text(before)
    expected = _api(server, "/stats", profile="custom", thresholds=json.dumps({"cat": target["threshold"]}))
    precision = expected["splits"]["validation"]["per_label"]["cat"]["precision"]
    expect(precision_cell).to_have_text(f"{100 * precision:.1f}%")
    expect(page.locator('[data-cell="validation:dog:precision"]')).to_have_class("num")  # untouched label
    expect(page.locator("#thresholds-save")).to_be_enabled()

    page.click("#thresholds-discard")
    expect(page.locator("#threshold-input")).to_have_value("0.5000")
    expect(precision_cell).to_have_text(before)
    expect(page.locator("#thresholds-save")).to_be_disabled()


def test_set_all_asks_first_and_applies_to_every_label(page) -> None:
    expect = _expect()
    page.uncheck("#use-optimized")
    page.fill("#threshold-input", "0.9")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#threshold-all")
    expect(page.locator('[data-cell="t:dog"]')).to_have_text("0.500")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#threshold-all")
    for label in LABELS:
        expect(page.locator(f'[data-cell="t:{label}"]')).to_have_text("0.900")
        expect(page.locator(f'#threshold-list [data-label="{label}"]')).to_contain_text("0.900")


def test_saving_asks_for_the_token_and_persists(page, server: Server) -> None:
    expect = _expect()
    try:
        page.select_option("#curve-label", "dog")
        page.uncheck("#use-optimized")
        page.fill("#threshold-input", "0.25")
        page.click("#threshold-set")
        page.click("#thresholds-save")  # no token yet: 401, the page asks for it
        expect(page.locator("#token-box")).to_be_visible()
        expect(page.locator("#messages .message.error")).to_contain_text("API token")
        page.fill("#token-input", TOKEN)
        page.click("#thresholds-save")
        expect(page.locator("#messages .message.info")).to_contain_text("saved")
        expect(page.locator("#thresholds-state")).to_contain_text("Saved custom thresholds")
        assert _api(server, "/thresholds")["custom"]["best"] == {"dog": 0.25}
    finally:
        httpx.post(
            f"{server.url}/thresholds", json={"reset": True}, headers={"Authorization": f"Bearer {TOKEN}"}
        )


# --- the gallery ------------------------------------------------------------------------------------


def test_filters_views_and_pages_change_the_gallery(page, server: Server) -> None:
    expect = _expect()
    cards = page.locator("#gallery .card")
    expect(cards).to_have_count(N_VALIDATION)
    expect(page.locator("#gallery-summary")).to_contain_text(f"of {N_VALIDATION}")
    incorrect = _api(server, "/predictions", filter="incorrect", page_size=100)
    assert 0 < incorrect["total"] < N_VALIDATION
    page.select_option("#gallery-filter", "incorrect")
    expect(cards).to_have_count(incorrect["total"])
    expect(page.locator("#gallery .card.correct")).to_have_count(0)
    expect(page.locator("#gallery-summary")).to_contain_text(f"incorrect: images 1–{incorrect['total']}")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.name)") == [i["name"] for i in incorrect["items"]]

    # basic view: labels above threshold, green when ground truth, red when not
    first = incorrect["items"][0]
    chips = page.locator("#gallery .card").first.locator(".chip")
    for label in first["predicted"]:
        kind = "ok" if label in first["true"] else "bad"
        expect(chips.filter(has_text=label)).to_have_class(f"chip {kind}")
    # advanced view: every label, its score and threshold as a bar, the name green or red
    page.check('input[name="gview"][value="advanced"]')
    rows = page.locator("#gallery .card").first.locator(".score-row")
    expect(rows).to_have_count(len(LABELS))
    for j, label in enumerate(LABELS):
        kind = "ok" if label in first["true"] else "bad"
        expect(rows.nth(j).locator(".name")).to_have_class(f"name {kind}")
        expect(rows.nth(j).locator(".bar .tick")).to_have_count(1)

    page.select_option("#gallery-filter", "all")
    page.check('input[name="gsplit"][value="train"]')
    expect(page.locator("#gallery-summary")).to_contain_text(f"train, all: images 1–24 of {N_TRAIN}")
    page.click("#gallery-pages button:has-text('next')")
    expect(cards).to_have_count(N_TRAIN - 24)
    expect(page.locator("#gallery-pages .page")).to_have_text("page 2 of 2")
    expect(page.locator("#gallery .card img").first).to_have_js_property("complete", True)
    assert page.locator("#gallery .card img").first.evaluate("img => img.naturalWidth") == 48


# --- new predictions --------------------------------------------------------------------------------


def _files(*names: str) -> list[dict]:
    return [
        {"name": name, "mimeType": "image/jpeg", "buffer": image_bytes(seed)}
        for seed, name in enumerate(names, start=11)
    ]


def test_upload_two_images_and_download_the_csv(page, server: Server, tmp_path: Path) -> None:
    expect = _expect()
    files = _files("first.jpg", "second.jpg")
    page.set_input_files("#file-input", files)
    expect(page.locator("#file-summary")).to_contain_text("2 files")
    page.select_option("#upload-which", "last")
    page.click("#predict-btn")
    results = page.locator("#results .card")
    expect(results).to_have_count(2)
    expect(page.locator("#results-summary")).to_contain_text("2 image(s) scored by the last model")
    expect(page.locator("#upload-progress")).to_be_hidden()

    with page.expect_download() as download:
        page.click("#results-bar [data-format=csv]")
    path = tmp_path / "predictions.csv"
    download.value.save_as(path)
    assert download.value.suggested_filename == "predictions.csv"
    table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    header = ["filename", "label_1", "label_2", "label_3", "score:cat", "score:dog", "score:bird"]
    assert table[0] == header and len(table) == 3

    direct = httpx.post(
        f"{server.url}/predict",
        files=[("images", (f["name"], f["buffer"])) for f in files],
        data={"which": "last"},
        timeout=60,
    ).json()
    for row, image in zip(table[1:], direct["images"], strict=True):
        assert row[0] == image["filename"]
        assert [x for x in row[1:4] if x] == image["predicted"]
        assert [float(x) for x in row[4:]] == pytest.approx([image["scores"][lab] for lab in LABELS])
        card = page.locator(f'#results .card[data-name="{image["filename"]}"]')
        expect(card.locator(".chip")).to_have_text(image["predicted"])


def test_a_zip_of_images_is_predicted(page) -> None:
    expect = _expect()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photos/one.jpg", image_bytes(21))
        archive.writestr("photos/two.jpg", image_bytes(22))
    page.set_input_files(
        "#file-input", [{"name": "photos.zip", "mimeType": "application/zip", "buffer": buffer.getvalue()}]
    )
    page.click("#predict-btn")
    expect(page.locator("#results .card .placeholder")).to_have_count(2)
    expect(page.locator("#results .card .fname")).to_have_text(["photos/one.jpg", "photos/two.jpg"])


def test_api_errors_show_as_readable_messages(page) -> None:
    expect = _expect()
    page.set_input_files(
        "#file-input",
        [*_files("good.jpg"), {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"not a jpeg"}],
    )
    page.click("#predict-btn")
    error = page.locator("#messages .message.error")
    expect(error).to_contain_text("prediction: images:")
    expect(error).to_contain_text("broken.jpg")
    expect(page.locator("#results .card")).to_have_count(0)
    expect(page.locator("#predict-btn")).to_be_enabled()

    page.select_option("#upload-mode", "one")
    page.fill("#upload-one", "1.5")
    page.click("#predict-btn")
    expect(page.locator("#messages .message.error").last).to_contain_text("not a number in [0, 1]")


# --- the page's pure helpers, run in the browser ----------------------------------------------------

HELPERS = """async () => {
  const csv = await import('/ui/csv.js');
  const files = await import('/ui/files.js');
  const jobs = await import('/ui/jobs.js');
  const train = await import('/ui/train.js');
  const app = await import('/ui/app.js');
  const table = (text) => Object.fromEntries(csv.labelsOf(csv.parseCsv(text)));
  const file = (name, size = 1) => new File([new Uint8Array(size)], name);
  const given = (paths) => files.named(paths.map((p) => file(p.split('/').pop())), paths).map((g) => g.name);
  return {
    quoted: csv.parseCsv('\\uFEFFa.jpg,"x, y",z\\r\\n\\r\\n"b ""q"".jpg",w\\n'),
    lists: table('filename,labels\\na.jpg,cat,dog\\nb.jpg\\na.jpg,bird\\n'),
    oneHot: table('file,cat,dog\\na.jpg,1,0\\nb.jpg,,1\\n'),
    trailing: csv.labelsFor(new Map([['a.jpg', ['cat']]]), 'images/a.jpg'),
    folder: given(['photos/a.jpg', 'photos/sub/b.jpg']),
    twoFolders: given(['one/a.jpg', 'two/b.jpg']),
    groups: files.chunk([file('a.jpg', 5), file('b.jpg', 5), file('c.zip'), file('d.jpg', 5)], 2, 8)
      .map((g) => g.map((f) => f.name)),
    durations: [0.4, 75, 4000].map(jobs.duration),
    names: ['Kitchen Photos!', '--', 'a.b_c'].map(train.modelName),
    routes: ['', '#datasets/3', '#models/tiny%3Av1', '#nope'].map(app.route),
  };
}"""


def test_the_page_helpers(page) -> None:
    got = page.evaluate(HELPERS)
    assert got["quoted"] == [["a.jpg", "x, y", "z"], ['b "q".jpg', "w"]]
    assert got["lists"] == {"a.jpg": ["cat", "dog", "bird"], "b.jpg": []}
    assert got["oneHot"] == {"a.jpg": ["cat"], "b.jpg": ["dog"]}
    assert got["trailing"] == ["cat"]
    assert got["folder"] == ["a.jpg", "sub/b.jpg"]  # the picked folder is the images' root
    assert got["twoFolders"] == ["one/a.jpg", "two/b.jpg"]
    assert got["groups"] == [["a.jpg"], ["b.jpg"], ["c.zip"], ["d.jpg"]]
    assert got["durations"] == ["under 1 s", "1 min 15 s", "1 h 7 min"]
    assert got["names"] == ["kitchen-photos", "model", "a.b_c"]
    assert got["routes"] == [
        {"view": "models", "arg": None},
        {"view": "datasets", "arg": "3"},
        {"view": "models", "arg": "tiny:v1"},
        {"view": "models", "arg": None},
    ]
