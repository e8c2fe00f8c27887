"""service.inspect.report: the offline HTML report, rendered from the hand-made model of test_inspect.py.

One self-contained file (inline CSS and SVG, thumbnails as data URIs, nothing fetched), user data
escaped, and no matplotlib or training code: a serving-only install writes it too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_inspect import LABELS, make_manifest, write_model

from service.inspect.report import render_report, write_report
from service.manifest import Manifest
from service.store import StoredModel

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("Model", "Thresholds", "Statistics", "Precision-recall curves", "Best vs last", "Label pairs")


def stored(folder: Path, labels: list[str] | None = None) -> StoredModel:
    manifest = make_manifest().model_copy(update={"labels": labels}) if labels else None
    write_model(folder, manifest)
    return StoredModel("pets:v1", folder, Manifest.read(folder, verify=False))


def test_the_report_is_one_offline_page_with_a_chart_per_label(tmp_path: Path) -> None:
    path = write_report(stored(tmp_path / "model"), tmp_path / "out")
    assert path == tmp_path / "out" / "report-pets-v1.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    for section in (*SECTIONS, "Likely mislabelled images"):
        assert f"<h2>{section}</h2>" in text
    assert text.count("<svg") == len(LABELS) + 1  # the pooled curves, then one chart per label
    for label in LABELS:
        figure = re.search(rf'<figure data-label="{label}">(.*?)</figure>', text, re.S)
        assert figure and figure.group(1).count('<polyline class="curve') == 4  # best/last × val/train
    assert "data:image/jpeg;base64," in text  # mislabel candidates with their thumbnails
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:|//|/)""", text)


def test_label_names_are_escaped(tmp_path: Path) -> None:
    text = render_report(stored(tmp_path, ["<script>alert(1)</script>", "a&b", 'say "hi"']))
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a&amp;b" in text
    assert 'data-label="say &#34;hi&#34;"' in text  # an attribute cannot be closed early


def test_the_report_needs_no_matplotlib_and_no_training_code(tmp_path: Path) -> None:
    model = stored(tmp_path / "model")
    script = f"""
import sys
sys.modules["matplotlib"] = None  # any import of it fails, as in a serving-only install
from pathlib import Path
from service.inspect.report import write_report
from service.manifest import Manifest
from service.store import StoredModel
folder = Path({str(model.path)!r})
model = StoredModel("pets:v1", folder, Manifest.read(folder, verify=False))
path = write_report(model, Path({str(tmp_path)!r}))
assert not [m for m in sys.modules if m == "training" or m.startswith(("training.", "torch"))], "imported"
print(path.stat().st_size)
"""
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout) > 10_000
