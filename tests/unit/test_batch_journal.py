"""The batch journal streamed: its compact index, old headers, bounded memory, and the final files
rendered from it (walk order through spilled sort runs, formula-safe CSV cells)."""

from __future__ import annotations

import csv
import io
import json
import random
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from service.batch import index as index_module
from service.batch import outputs
from service.batch.files import sort_key
from service.batch.index import DoneIndex
from service.batch.journal import JOURNAL_FILE, Journal
from service.errors import BatchError

HEADER = {"kind": "header", "journal": 1, "images": "/x", "shard": "0/1", "which": "best", "model": None}


def done(name: str, scores: dict[str, float], predicted: list[str], version: str = "v1") -> dict:
    return {"kind": "done", "file": name, "version": version, "scores": scores, "predicted": predicted}


def model(labels: list[str], version: str = "v1") -> dict:
    thresholds = dict.fromkeys(labels, 0.5)
    return {
        "kind": "model",
        "name": "m",
        "version": version,
        "which": "best",
        "labels": labels,
        "thresholds": thresholds,
    }


def render(journal: Journal, write=outputs.write_json) -> str:
    out = io.StringIO()
    write(journal, out)
    return out.getvalue()


# --- the index ----------------------------------------------------------------------------------


def test_done_index_behaves_like_a_dict_through_merges_and_shared_high_halves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Few distinct high halves, so lookups and merges must tell keys apart by their low half.
    monkeypatch.setattr(
        index_module, "digest", lambda path: (len(path) % 3) << 64 | zlib.crc32(path.encode())
    )
    monkeypatch.setattr(index_module, "MERGE_AT", 7)
    rng = random.Random(0)
    index, reference = DoneIndex(), {}
    names = [f"d{rng.randrange(40)}/{'x' * rng.randrange(3)}{i}.jpg" for i in range(300)]
    for step in range(3000):
        name = rng.choice(names)
        if rng.random() < 0.7:
            index.add(name, step + 1)
            reference[name] = step + 1
        else:
            index.discard(name)
            reference.pop(name, None)
        if step % 50 == 0:
            assert len(index) == len(reference)
            assert all(index.get(n) == reference.get(n) for n in names)
    assert len(index) == len(reference) and all((n in index) == (n in reference) for n in names)


# --- opening ------------------------------------------------------------------------------------


def test_a_journal_from_before_which_resumes_with_the_same_command(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    old = {"kind": "header", "journal": 1, "images": "/x", "shard": "0/1", "model": "last", "threshold": None}
    lines = [old, model(["cat"]), done("a.jpg", {"cat": 0.9}, ["cat"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    new = {**HEADER, "which": "last", "threshold": None}
    journal = Journal.open(path, new)
    assert "a.jpg" in journal.done and len(journal.done) == 1
    journal.close()
    with pytest.raises(BatchError, match="which='last', this run asks for 'best'"):
        Journal.open(path, {**new, "which": "best"})
    with pytest.raises(BatchError, match="model=None, this run asks for 'cats'"):
        Journal.open(path, {**new, "model": "cats"})


def test_a_journal_without_answers_takes_the_new_options_but_a_foreign_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    Journal.open(path, HEADER).close()
    Journal.open(path, {**HEADER, "which": "last"}).close()  # nothing answered yet: no conflict
    assert json.loads(path.read_text())["which"] == "last"

    path.write_text('{"kind":"done","file":"a.jpg"}\n')
    with pytest.raises(BatchError, match="not a manylabel journal"):
        Journal.open(path, HEADER)
    assert path.read_text() == '{"kind":"done","file":"a.jpg"}\n'


def synthetic_journal(path: Path, count: int, labels: int = 20) -> None:
    """A header, a model and `count` done records with `labels` scores: ~800 bytes a line."""
    names = [f"label_{i:02d}" for i in range(labels)]
    rng = random.Random(0)
    with open(path, "w") as f:
        for record in (HEADER, model(names)):
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
        for i in range(count):
            scores = {name: rng.random() for name in names}
            predicted = [name for name in names if scores[name] >= 0.5]
            record = done(f"camera{i % 37:02d}/2024-{i % 12 + 1:02d}/IMG_{i:07d}.jpg", scores, predicted)
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


def test_opening_and_rendering_a_journal_take_memory_independent_of_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding the parsed records took ~6x the journal's size (1.2 GiB for 250k images; the batch
    Job has 1 GiB). Streamed, 250k records (192 MiB) peak at 14.5 MiB to open (6.7 MiB kept) and
    15.5 MiB to render, measured with tracemalloc; here 8000 records (6 MiB), sort runs of 1000."""
    path = tmp_path / JOURNAL_FILE
    synthetic_journal(path, 8000)
    size = path.stat().st_size
    monkeypatch.setattr(outputs, "SORT_RUN", 1000)
    tracemalloc.start()
    try:
        journal = Journal.open(path, HEADER)
        kept, opening = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        images = sum(1 for _ in outputs.answers(journal))
        rendering = tracemalloc.get_traced_memory()[1] - kept
    finally:
        tracemalloc.stop()
    journal.close()
    assert images == 8000
    assert kept < 40 * 8000 + 100_000  # the index (24 bytes a file; a dict took ~130), the model record
    assert opening < size / 3, (opening, size)  # held as records: ~6x size
    assert rendering < size / 3, (rendering, size)


# --- the final files ----------------------------------------------------------------------------


def test_final_files_follow_the_walk_order_through_spilled_runs_and_the_latest_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "SORT_RUN", 4)
    names = [f"{folder}/{i}.jpg" for folder in ("a", "a b", "b", "a/c") for i in range(6)] + ["z.jpg"]
    journal = Journal.open(tmp_path / JOURNAL_FILE, HEADER)
    journal.append([model(["cat"])])
    shuffled = random.Random(1).sample(names, len(names))
    journal.append([done(name, {"cat": 0.1}, []) for name in shuffled])
    journal.append([done("b/3.jpg", {"cat": 0.9}, ["cat"])])  # answered again: the later record wins
    journal.append([{"kind": "failed", "file": "z.jpg", "status": 400, "reason": "bad", "retry": False}])
    expected = sorted(set(names) - {"z.jpg"}, key=sort_key)
    assert expected[:7] == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.jpg", "a/4.jpg", "a/5.jpg", "a/c/0.jpg"]

    result = json.loads(render(journal))
    assert [image["filename"] for image in result["images"]] == expected and result["count"] == len(expected)
    assert next(i for i in result["images"] if i["filename"] == "b/3.jpg")["predicted"] == ["cat"]
    assert result["failed"] == [{"filename": "z.jpg", "status": 400, "reason": "bad"}]
    rows = list(csv.reader(io.StringIO(render(journal, outputs.write_csv))))
    assert [row[0] for row in rows[1:]] == expected
    journal.close()


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(tmp_path: Path) -> None:
    """File names and labels come from users: =, +, -, @, tab (and ', to stay reversible) lead cells get a
    leading ' (OWASP)."""
    labels = ["=HYPERLINK(x)", "+cmd", "cat"]
    images = tmp_path / "in"
    names = ["=1+2.jpg", "+a.jpg", "-b.jpg", "@c.jpg", "\td.jpg", "'q.jpg", "ok.jpg"]
    images.mkdir()
    for name in names:
        (images / name).write_bytes(b"x")
    journal = Journal.open(tmp_path / JOURNAL_FILE, HEADER)
    journal.append([model(labels)])
    journal.append([done(name, dict.fromkeys(labels, 0.9), labels) for name in names])

    rows = list(csv.reader(io.StringIO(render(journal, outputs.write_csv))))
    assert rows[0] == ["filename", "label_1", "label_2", "label_3", *(f"score:{lb}" for lb in labels)]
    by_name = {row[0]: row for row in rows[1:]}
    assert sorted(by_name) == sorted(["'" + n if n != "ok.jpg" else n for n in names])
    assert all(row[1:4] == ["'=HYPERLINK(x)", "'+cmd", "cat"] for row in rows[1:])

    out = tmp_path / "predictions.zip"
    outputs.write_output(journal, "zip", images, out)
    in_zip = list(csv.reader(io.StringIO(zipfile.ZipFile(out).read("predictions.csv").decode())))
    assert all(not row[0].startswith(("=", "+", "-", "@")) for row in in_zip)
    assert all(row[1:3] == ["'=HYPERLINK(x)", "'+cmd"] for row in in_zip[1:])
    journal.close()
