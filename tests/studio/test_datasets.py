"""The dataset store: content stored once, one transaction per upload, labels merged with history."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from studiokit import SAMPLE, csv_bytes, files, jpeg, new_store

from service.errors import RequestError
from service.server.http.uploads import InputFile
from service.studio import datasets as datasets_module
from service.studio.export import export_job
from service.studio.plan import JobSpec, estimate, plan


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "images").glob("*/*"))


def test_the_same_content_is_stored_once_whatever_its_names_and_datasets(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    one, two = jpeg(1), jpeg(2)
    first = store.create("a", files(**{"x.jpg": one, "sub__y.jpg": one, "z.jpg": two}), None)
    assert first["images"] == 3 and first["version"] == 1 and first["problems"] == []
    assert len(stored_files(tmp_path)) == 2
    again = store.add(first["id"], files(**{"x.jpg": one, "z.jpg": two}), None)
    assert again["images"] == 3 and again["version"] == 1, "nothing new: no new version"
    store.create("b", files(**{"w.jpg": two}), None)
    assert len(stored_files(tmp_path)) == 2
    (path,) = [p for p in stored_files(tmp_path) if p.read_bytes() == one]
    assert path.parent.name == path.name[:2] and len(path.name) == 64


def test_problems_are_reported_not_fatal(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    upload = files(**{"ok.jpg": jpeg(1), "bad.jpg": b"\xff\xd8 not a jpeg", "notes.txt": b"hi"})
    upload += [
        InputFile(name="__MACOSX/._ok.jpg", data=b"junk"),
        InputFile(name="../escape.jpg", data=jpeg(3)),
    ]
    labels = csv_bytes("ok.jpg,cat", "bad.jpg,dog", "gone.jpg,dog")
    body = store.create("a", upload, labels)
    assert body["images"] == 1 and body["labelled"] == 1 and body["labels"] == {"cat": 1, "dog": 0}
    problems = {p["file"]: p["error"] for p in body["problems"]}
    assert set(problems) == {"../escape.jpg", "bad.jpg", "notes.txt", "gone.jpg"}  # bad.jpg once
    assert "unreadable image" in problems["bad.jpg"] and "not in the dataset" in problems["gone.jpg"]
    changed = store.add(body["id"], files(**{"ok.jpg": jpeg(9)}), None)
    assert "another image of this name" in changed["problems"][0]["error"] and changed["version"] == 1


def test_an_upload_that_fails_midway_leaves_the_dataset_as_it_was(tmp_path: Path, monkeypatch) -> None:
    store = new_store(tmp_path)
    before = store.create("a", files(**{"a.jpg": jpeg(1)}), csv_bytes("a.jpg,cat"))
    csv_before = store.labels_csv(before["id"])

    def crash(*args, **kwargs):
        raise OSError("disk full")  # after the images rows were written, inside the transaction

    monkeypatch.setattr(datasets_module, "apply_labels", crash)
    with pytest.raises(OSError):
        store.add(before["id"], files(**{"b.jpg": jpeg(2), "c.jpg": jpeg(3)}), csv_bytes("a.jpg,dog"))
    monkeypatch.undo()
    after = store.summary(before["id"])
    assert after == {k: v for k, v in before.items() if k != "problems"}
    assert store.labels_csv(before["id"]) == csv_before
    assert len(stored_files(tmp_path)) == 3, "the new contents were written before the transaction"
    assert store.sweep() == 2 and len(stored_files(tmp_path)) == 1, "and are removed at the next start"
    with pytest.raises(RequestError) as caught:  # a bad CSV refuses the whole upload, nothing written
        store.add(before["id"], files(**{"d.jpg": jpeg(4)}), ("l.csv", b"file,a,b\nd.jpg,1,0\ne.jpg,2,0\n"))
    assert caught.value.field == "labels" and store.summary(before["id"])["images"] == 1
    with pytest.raises(RequestError) as caught:
        store.create("a", files(**{"e.jpg": jpeg(5)}), None)
    assert caught.value.status == 409 and caught.value.field == "name"


def test_merging_labels_replaces_the_named_images_labels_and_keeps_history(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ds = store.create("a", files(**{"images__a.jpg": jpeg(1), "b.jpg": jpeg(2), "c.jpg": jpeg(3)}), None)
    assert ds["labelled"] == 0 and ds["unlabelled"] == 3 and ds["labels"] == {}
    one = store.merge_labels(ds["id"], csv_bytes("a.jpg,cat,dog", "b.jpg,cat"))
    assert one["version"] == 2 and one["labelled"] == 2 and one["labels"] == {"cat": 2, "dog": 1}
    two = store.merge_labels(
        ds["id"], csv_bytes("filename,cat,dog,bird", "images/a.jpg,0,1,0", "c.jpg,0,0,0")
    )
    assert two["version"] == 3 and two["labelled"] == 3
    assert two["labels"] == {"bird": 0, "cat": 1, "dog": 1}  # a one-hot header names bird
    assert store.labels_csv(ds["id"]).splitlines() == ["filename", "b.jpg,cat", "c.jpg", "images/a.jpg,dog"]
    same = store.merge_labels(ds["id"], csv_bytes("c.jpg"))
    assert same["version"] == 3, "no change, no new version"
    events = store.db.all("SELECT name, version, labels, source FROM label_events ORDER BY id")
    history = [(e["name"], e["version"], json.loads(e["labels"])) for e in events]
    assert history == [
        ("b.jpg", 2, ["cat"]),
        ("images/a.jpg", 2, ["cat", "dog"]),
        ("c.jpg", 3, []),
        ("images/a.jpg", 3, ["dog"]),
    ]
    assert {e["source"] for e in events} == {"csv:labels.csv"}


def test_a_job_folder_links_the_stored_images_and_trains_as_written(tmp_path: Path) -> None:
    from training.data.labels import read_labels_csv

    store = new_store(tmp_path / "data")
    upload = files(**{p.name: p.read_bytes() for p in sorted((SAMPLE / "images").iterdir())[:12]})
    rows = (SAMPLE / "labels.csv").read_text().splitlines()[:12]
    ds = store.create("sample", upload, ("labels.csv", "\n".join(rows).encode()))
    spec = JobSpec.parse({"dataset": ds["id"], "name": "m", "exclude": ["skirt"]}, need_name=True)
    snap = store.snapshot(ds["id"])
    p = plan(snap, spec)
    folder = tmp_path / "job"
    export_job(store, p, estimate(p, spec, 12, store_history()), 60.0, folder)
    name = p.images[0]
    assert os.path.samefile(folder / "images" / name, store.blob_path(snap.images[name].sha256))
    table = read_labels_csv(folder / "labels.csv")
    assert "skirt" not in table.labels and set(table.rows) == set(p.images)
    assert json.loads((folder / "plan.json").read_text())["shas"] == sorted(p.shas)


def store_history():
    from service.studio.plan import History

    return History()


# --- schema 2: image ids, label edits, the labels at any version ------------------------------------

# The tables manylabel's first studio wrote (schema 1, PRAGMA user_version = 1), as they were.
SCHEMA_1 = """
CREATE TABLE datasets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE images (dataset INTEGER NOT NULL REFERENCES datasets(id), name TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256), added INTEGER NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dataset, name));
CREATE INDEX images_by_sha ON images(sha256);
CREATE TABLE labels (dataset INTEGER NOT NULL REFERENCES datasets(id), label TEXT NOT NULL,
    PRIMARY KEY (dataset, label));
CREATE TABLE image_labels (dataset INTEGER NOT NULL, name TEXT NOT NULL, label TEXT NOT NULL,
    PRIMARY KEY (dataset, name, label), FOREIGN KEY (dataset, name) REFERENCES images(dataset, name));
CREATE TABLE label_events (id INTEGER PRIMARY KEY, dataset INTEGER NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, labels TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX label_events_by_image ON label_events(dataset, name, id);
CREATE TABLE featurised (sha256 TEXT NOT NULL, backbone TEXT NOT NULL, job INTEGER NOT NULL,
    PRIMARY KEY (sha256, backbone));
CREATE TABLE jobs (id INTEGER PRIMARY KEY, dataset INTEGER NOT NULL REFERENCES datasets(id),
    dataset_version INTEGER NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    view TEXT NOT NULL DEFAULT '{}', model TEXT, error TEXT, pid INTEGER, created REAL NOT NULL,
    started REAL, finished REAL, measured TEXT NOT NULL DEFAULT '{}');
CREATE INDEX jobs_by_state ON jobs(state, id);
"""


def schema_1_database(root: Path) -> None:
    """A studio database as schema 1 left it: dataset 'a' (b.jpg, c.jpg labelled, a.jpg not) and a job."""
    import sqlite3

    root.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(root / "studio.db")
    conn.executescript(SCHEMA_1)
    conn.execute("INSERT INTO datasets VALUES (1, 'a', 2, 0)")
    conn.executemany("INSERT INTO blobs VALUES (?, 10)", [("s1",), ("s2",)])
    rows = [(1, "c.jpg", "s1", 1, 1), (1, "a.jpg", "s2", 1, 0), (1, "b.jpg", "s2", 2, 1)]
    conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO labels VALUES (1, ?)", [("cat",), ("dog",)])
    conn.executemany("INSERT INTO image_labels VALUES (1, ?, ?)", [("c.jpg", "cat"), ("b.jpg", "dog")])
    events = [("c.jpg", 1, '["cat", "dog"]'), ("c.jpg", 2, '["cat"]'), ("b.jpg", 2, '["dog"]')]
    conn.executemany(
        "INSERT INTO label_events (dataset, name, version, labels, source, at) "
        "VALUES (1, ?, ?, ?, 'csv:x', 0)",
        events,
    )
    conn.execute(
        "INSERT INTO jobs (dataset, dataset_version, name, spec, state, created) "
        "VALUES (1, 2, 'm', '{}', 'done', 0)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_schema_1_database_is_migrated_in_place_with_stable_image_ids(tmp_path: Path) -> None:
    from service.studio.labelling import Change, edit

    schema_1_database(tmp_path)
    store = new_store(tmp_path)
    db = store.db
    assert db.one("PRAGMA user_version")[0] == 2
    assert db.all("PRAGMA foreign_key_check") == []
    ids = {r["name"]: r["id"] for r in db.all("SELECT id, name FROM images")}
    assert ids == {"c.jpg": 1, "a.jpg": 2, "b.jpg": 3}, "the old rowids became the ids"
    assert store.labels_csv(1).splitlines() == ["filename", "b.jpg,dog", "c.jpg,cat"]
    assert store.labels_csv(1, 1).splitlines() == ["filename", "c.jpg,cat,dog"]
    assert db.one("SELECT dataset_version FROM jobs")[0] == 2
    after, changed, version = edit(db, 1, [ids["a.jpg"]], Change(add=("bird",)), "edit", ["image_id"])
    assert (changed, version, after[0].labels) == (1, 3, frozenset({"bird"}))
    with db.transaction() as tx:
        tx.execute("INSERT INTO decisions VALUES (1, 1, 'cat', 'reject', NULL, 0)")
    db.close()
    store = new_store(tmp_path)  # opened again: already at 2, nothing migrates twice
    added = store.add(1, files(**{"d.jpg": jpeg(4)}), None)
    assert added["version"] == 4
    store.db._conn.execute("VACUUM")
    ids_after = {r["name"]: r["id"] for r in store.db.all("SELECT id, name FROM images")}
    assert ids_after == {**ids, "d.jpg": 4}, "ids survive VACUUM; a new image gets a new one"


def test_label_names_are_the_ones_the_csv_export_reads_back(tmp_path: Path) -> None:
    from service.labels_csv import read_labels
    from service.studio.labelling import Change, edit, label_problem

    odd = ("=cmd()", "'=x", "a,b", 'say "hi"', "-1", "filename", "ünï")
    assert [label_problem(x) for x in odd] == [None] * len(odd)
    for bad in ("", " cat", "cat ", "a\tb", "x" * 201):
        assert label_problem(bad), bad
    store = new_store(tmp_path)
    ds = store.create("a", files(**{"a.jpg": jpeg(1)}), None)
    edit(store.db, ds["id"], [1], Change(add=odd), "edit", ["image_id"])
    table = read_labels(store.labels_csv(ds["id"]).encode())
    assert table.rows == {"a.jpg": frozenset(odd)}
