"""Labels CSV reading, matching to images, label selection and the counts table."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.labels import (
    LabelledSet,
    Sample,
    label_counts_table,
    load_labelled_set,
    match_labels,
    read_labels_csv,
    select_labels,
)
from training.data.sources import DataError, ImageFile


def csv_file(tmp_path: Path, data: bytes | str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def images(*relpaths: str) -> list[ImageFile]:
    return [ImageFile(r, Path("/data") / r) for r in relpaths]


def labels_of(ls: LabelledSet) -> dict[str, set[str]]:
    return {s.image.relpath: set(s.labels) for s in ls.samples}


def test_product_format(tmp_path: Path) -> None:
    table = read_labels_csv(csv_file(tmp_path, "000006.jpg,bus,car,person\n000007.jpg,,dog,\nneg.jpg\n"))
    assert not table.one_hot
    assert table.rows == {
        "000006.jpg": {"bus", "car", "person"},
        "000007.jpg": {"dog"},
        "neg.jpg": frozenset(),
    }
    assert table.labels == ["bus", "car", "dog", "person"]


def test_bom_quotes_crlf_blank_lines_whitespace_and_duplicates(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf"a, b.jpg", cat ,"dog"\r\n\r\n  ,  \r\n.\\sub\\c.jpg\r\n"a, b.jpg",bird\r\n'
    table = read_labels_csv(csv_file(tmp_path, data))
    assert table.rows == {"a, b.jpg": {"bird", "cat", "dog"}, "sub/c.jpg": frozenset()}


def test_header_row_in_product_format_is_dropped(tmp_path: Path) -> None:
    table = read_labels_csv(csv_file(tmp_path, "Filename,labels\na.jpg,cat\n"))
    assert table.rows == {"a.jpg": {"cat"}}
    table = read_labels_csv(csv_file(tmp_path, "image.jpg,cat\n"))  # a real image named "image"
    assert table.rows == {"image.jpg": {"cat"}}


def test_one_hot_is_detected(tmp_path: Path) -> None:
    data = "filename,cat,dog,fox,\na.jpg,1,0,0,\nb.jpg,1,1,0\nc.jpg,0,0,\n"
    table = read_labels_csv(csv_file(tmp_path, data))
    assert table.one_hot
    assert table.labels == ["cat", "dog", "fox"]  # fox has no positives but is a declared label
    assert table.rows == {"a.jpg": {"cat"}, "b.jpg": {"cat", "dog"}, "c.jpg": frozenset()}


def test_product_rows_that_look_binary_do_not_make_it_one_hot(tmp_path: Path) -> None:
    table = read_labels_csv(csv_file(tmp_path, "a.jpg,cat,dog\nb.jpg\nc.jpg\n"))
    assert not table.one_hot
    assert table.rows["a.jpg"] == {"cat", "dog"}


def test_bad_one_hot_cell_names_the_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "filename,cat,dog\na.jpg,1,0\nb.jpg,0,1\n\nc.jpg,2,0\n")
    with pytest.raises(DataError, match=r"labels.csv, line 5: '2' under 'cat' is not 0 or 1"):
        read_labels_csv(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b" \r\n,,\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 3: binary data"),
        (b"a.jpg,cat\nb.jpg,caf\xe9\n", "line 2: not UTF-8"),
        (b"\xff\xfea\x00", "UTF-16"),
        (b"a.jpg,cat\n,dog\n", "line 2: labels but no file name"),
    ],
)
def test_unreadable_csv_is_a_data_error(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_labels_csv(csv_file(tmp_path, data))


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such labels file"):
        read_labels_csv(tmp_path / "nope.csv")


def test_matching_paths_bare_names_ambiguous_missing_unlabelled(tmp_path: Path) -> None:
    imgs = images("a.jpg", "x/b.jpg", "x/dup.jpg", "y/dup.jpg", "x/deep/c.jpg", "lonely.jpg", "y/a.jpg")
    data = "a.jpg,cat\nb.jpg,dog\ndup.jpg,cat\ny/dup.jpg,fox\ndeep/c.jpg,cat\nx/b.jpg,bird\ngone.jpg,cat\n"
    ls = load_labelled_set(imgs, csv_file(tmp_path, data))
    assert labels_of(ls) == {
        "a.jpg": {"cat"},  # an exact path wins over y/a.jpg's bare name
        "x/b.jpg": {"dog", "bird"},  # bare name and path of one image: merged
        "y/dup.jpg": {"fox"},
        "x/deep/c.jpg": {"cat"},  # a trailing part of the path is enough when unique
    }
    assert ls.ambiguous == ["dup.jpg"]
    assert ls.missing == ["gone.jpg"]
    assert ls.unlabelled == ["lonely.jpg", "x/dup.jpg", "y/a.jpg"]
    assert ls.labels == ["bird", "cat", "dog", "fox"]
    report = "\n".join(ls.report_lines(limit=2))
    assert "3 images have no row" in report and "lonely.jpg, x/dup.jpg ... (+1 more)" in report
    assert "1 labels CSV rows name files that are not in the images: gone.jpg" in report
    assert "several images share" in report and "dup.jpg" in report


def test_nothing_matches(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="none of its 1 file names matches"):
        load_labelled_set(images("a.jpg"), csv_file(tmp_path, "b.jpg,cat\n"))


def labelled(rows: dict[str, set[str]]) -> LabelledSet:
    samples = [Sample(im, frozenset(rows[im.relpath])) for im in images(*rows)]
    return LabelledSet(samples, sorted(set().union(*rows.values())))


def test_include_and_exclude() -> None:
    ls = labelled({"a.jpg": {"cat", "dog"}, "b.jpg": {"dog", "fox"}, "c.jpg": {"fox"}})
    kept = select_labels(ls, include=["cat", "dog"], exclude=None)
    assert kept.labels == ["cat", "dog"]
    assert labels_of(kept) == {"a.jpg": {"cat", "dog"}, "b.jpg": {"dog"}, "c.jpg": set()}  # c: a negative
    kept = select_labels(ls, include=[], exclude=["dog"])
    assert kept.labels == ["cat", "fox"]
    assert select_labels(ls, None, None).labels == ["cat", "dog", "fox"]


def test_unknown_empty_and_no_labels_left() -> None:
    ls = LabelledSet([Sample(images("a.jpg")[0], frozenset({"cat"}))], ["cat", "dog"])
    with pytest.raises(DataError, match="unknown labels cow; the labels are: cat, dog"):
        select_labels(ls, include=["cat", "cow"], exclude=None)
    with pytest.raises(DataError, match="no image is labelled dog.*--exclude dog"):
        select_labels(ls, None, None)
    with pytest.raises(DataError, match="no labels left"):
        select_labels(ls, include=["cat"], exclude=["cat"])


def test_label_counts_table() -> None:
    ls = labelled({"a.jpg": {"cat", "dog"}, "b.jpg": {"dog"}, "c.jpg": set()})
    table = label_counts_table(ls.samples[:2], ls.samples[2:], ["cat", "dog"])
    assert table.splitlines() == [
        "label   train  validation  total",
        "------  -----  ----------  -----",
        "cat         1           0      1",
        "dog         2           0      2",
        "------  -----  ----------  -----",
        "images      2           1      3",
    ]


def test_match_against_a_real_folder(tmp_path: Path) -> None:
    from training.data.sources import open_source

    for name in ["p/a.png", "p/b.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not decoded here")
    with open_source(tmp_path / "p") as imgs:
        ls = match_labels(imgs, read_labels_csv(csv_file(tmp_path, "a.png,cat\nb.png\n")))
    assert labels_of(ls) == {"a.png": {"cat"}, "b.png": set()}


def test_a_predictions_csv_fed_back_keeps_labels_that_were_neutralised(tmp_path: Path) -> None:
    from service.bundles import csv_safe

    path = tmp_path / "labels.csv"
    path.write_text(f"a.jpg,{csv_safe('+plus')},{csv_safe('=eq')},cat\n", encoding="utf-8")
    table = read_labels_csv(path)
    assert "'" not in path.read_text().split(",", 1)[0] and "'+plus" in path.read_text()
    assert {"+plus", "=eq", "cat"} <= set(table.labels)
