"""The terminal tables (rich, rendered to plain text) of `manylabel stats | predictions | thresholds`
and of the training summary, on the hand-made model of test_inspect.py."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from test_inspect import make_manifest, write_model

from service.inspect.cli import predictions_text, stats_text, thresholds_text
from service.inspect.inspector import Inspector
from service.manifest import Manifest
from service.tables import print_summary

ODD = ["[red]", "dog", "bird"]  # rich markup syntax in a label must print as written


@pytest.fixture
def inspector(tmp_path: Path) -> Inspector:
    folder = write_model(tmp_path, make_manifest().model_copy(update={"labels": ODD}))
    return Inspector(folder, Manifest.read(folder, verify=False), tag="pets:v1")


def _row(text: str, first: str) -> list[str]:
    """The cells of the table row starting with `first`."""
    line = next(line for line in text.splitlines() if line.startswith(first + " "))
    return re.split(r"\s{2,}", line.strip())


def test_stats_tables(inspector: Inspector) -> None:
    text = stats_text(inspector.stats("best"))
    assert "\x1b" not in text  # plain text: a file or a log gets no colour codes
    assert "train, per label:" in text and "validation, per label:" in text
    assert _row(text, "exact-match accuracy") == ["exact-match accuracy", "1.000", "0.500"]
    assert _row(text, "BCE loss") == ["BCE loss", "-", "-"]
    # validation rows come last: support, thresh, prec, recall, F1, AP, TP, FP, FN, TN
    last = re.split(r"\s{2,}", text.splitlines()[-3].strip())
    assert last == ["[red]", "3", "0.500", "0.667", "0.667", "0.667", "0.806", "2", "1", "1", "2"]


def test_predictions_tables(inspector: Inspector) -> None:
    answer = inspector.predictions("best", "validation", page_size=2)
    text = predictions_text(answer, advanced=True)
    assert text.splitlines()[0] == "validation, filter all, sort row asc: 6 images, page 1 of 3"
    assert _row(text, "row")[3:] == ODD
    assert _row(text, "  5")[:3] == ["5", "b.jpg", "NO"] and "0.300 !" in text  # wrong, below threshold
    basic = predictions_text(
        inspector.predictions("best", "validation", page_size=2, view="basic"), advanced=False
    )
    assert "[red], dog -> dog 0.80" in basic


def test_thresholds_table_marks_custom_values(inspector: Inspector) -> None:
    inspector.update_thresholds({"which": "last", "set": {"dog": 0.25}})
    text = thresholds_text(inspector.custom_state(), inspector.manifest)
    assert _row(text, "dog") == ["dog", "0.400", "0.400", "0.400", "0.250*"]
    assert text.splitlines()[-1].startswith("* custom value")


def test_training_summary(inspector: Inspector) -> None:
    m = inspector.manifest
    stats = {
        s: inspector.statistics("best", s, inspector.thresholds("best")) for s in ("train", "validation")
    }
    entries = {w: e.model_copy(update={"metrics": stats}) for w, e in m.models.items()}
    entries["best"] = entries["best"].model_copy(update={"threshold_fallbacks": {"bird": "no positives"}})
    result = types.SimpleNamespace(
        manifest=m.model_copy(update={"models": entries}),
        stored=types.SimpleNamespace(tag="pets:v1", path="/store/pets"),
        feature_seconds=1.0,
        head_seconds=2.0,
        total_seconds=3.5,
        stopped="stopped after 3 epochs",
    )
    lines: list[str] = []
    print_summary(result, say=lines.append)
    text = "\n".join(lines)
    assert "total 3.5 s; stopped after 3 epochs" in text
    assert _row(text, "mAP") == ["mAP", "1.000", "0.741", "1.000", "0.741"]
    assert _row(text, "epoch") == ["epoch", "3", "3", "3", "3"]
    assert "best model (epoch 3), validation, thresholds from oof:" in text
    assert "  note: bird: no positives" in text
