"""The studio's labels CSV reader and writer: the formats `manylabel train` takes, matched to names."""

from __future__ import annotations

import pytest

from service.labels_csv import LabelsCsvError, match, read_labels, write_labels


def test_lists_with_and_without_a_header() -> None:
    table = read_labels(b"filename\na.jpg,cat,dog\nb.jpg\n'=c.jpg,cat\n")
    assert table.rows == {"a.jpg": {"cat", "dog"}, "b.jpg": frozenset(), "=c.jpg": {"cat"}}
    assert table.labels == ["cat", "dog"] and not table.one_hot
    assert read_labels(b"a.jpg,cat\r\na.jpg,dog\r\n").rows == {"a.jpg": {"cat", "dog"}}  # rows merged


def test_one_hot_keeps_every_header_label() -> None:
    table = read_labels("\ufefffile,cat,dog,bird\na.jpg,1,0,0\nb.jpg,0,0,\n".encode())
    assert table.one_hot and table.labels == ["bird", "cat", "dog"]
    assert table.rows == {"a.jpg": {"cat"}, "b.jpg": frozenset()}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        ("a.jpg,cat".encode("utf-16"), "UTF-16"),
        (b"a.jpg,cat\n\x00\x01", "line 2: binary"),
        (b"a.jpg,\xff\xfe\n", "line 1: not UTF-8"),
        (b"file,cat,dog\na.jpg,1,0\nb.jpg,2,0\n", "line 3: '2' under 'cat'"),
        (b",cat\n", "no file name"),
    ],
)
def test_bad_files_are_refused_with_the_line(data: bytes, words: str) -> None:
    with pytest.raises(LabelsCsvError, match="up.csv") as caught:
        read_labels(data, "up.csv")
    assert words in str(caught.value)


def test_names_match_exactly_or_by_a_unique_trailing_part() -> None:
    names = {"images/a.jpg", "x/b.jpg", "y/b.jpg", "c.jpg"}
    rows = {"a.jpg": {"cat"}, "b.jpg": {"dog"}, "y/b.jpg": {"cow"}, "c.jpg": set(), "d.jpg": {"cat"}}
    matched = match({k: frozenset(v) for k, v in rows.items()}, names)
    assert matched.found == {"images/a.jpg": {"cat"}, "y/b.jpg": {"cow"}, "c.jpg": frozenset()}
    assert matched.ambiguous == ["b.jpg"] and matched.missing == ["d.jpg"]


def test_what_the_studio_writes_trains_as_it_reads(tmp_path) -> None:
    from training.data.labels import read_labels_csv  # the CSV `manylabel train` reads

    rows = [("images/0.jpg", {"b", "a"}), ("1.jpg", set()), ("=2.jpg", {"+x"}), ("3,4.jpg", {"a"})]
    text = write_labels(rows)
    assert text.splitlines()[:2] == ["filename", "images/0.jpg,a,b"]
    (tmp_path / "labels.csv").write_text(text)
    theirs = read_labels_csv(tmp_path / "labels.csv")
    ours = read_labels(text.encode())
    assert theirs.rows == ours.rows == {name: frozenset(labels) for name, labels in rows}
    assert theirs.labels == ours.labels == ["+x", "a", "b"]
