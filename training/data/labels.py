"""Labels CSV -> labelled samples: read the CSV (`service.labels_csv`), match its rows to the
source's images, choose labels.

Two CSV layouts are accepted and told apart automatically:

- the product format, no header: `000006.jpg,bus,car,person` (file name, then any number of labels,
  blank cells ignored; a row with a file name only is an image with none of the labels). A first row
  whose first cell is a column name such as `filename`, `file`, `image` or `path` (and not an image file
  name) is taken as a header and dropped; any other first row is data.
- one-hot: header `filename,label_a,label_b,...`, then 0/1 cells (blank = 0). Chosen when the header's
  label cells are not all 0/1 and at least half of the later rows fit the header with only 0/1 cells;
  from then on every row must fit, so a stray `2` is an error with its line number, not a new label.

File names are paths relative to the source root, or any trailing part of that path (usually the bare
name) when it identifies exactly one image. Names that fit several images are reported, not guessed.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.labels_csv import LabelsCsvError, read_labels
from training.data.sources import DataError, ImageFile, Sample

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class LabelsTable:
    """A labels CSV as read, before matching: file name as written -> its labels (duplicates merged)."""

    source: str  # the CSV's path, for messages
    rows: dict[str, frozenset[str]]
    labels: list[str]  # sorted; one-hot: every header label, even one with no 1s
    one_hot: bool


@dataclass(frozen=True)
class LabelledSet:
    """Samples to train on, plus what did not match, so the user can be told before hours of training."""

    samples: list[Sample]  # sorted by image relpath
    labels: list[str]  # sorted
    unlabelled: list[str] = field(default_factory=list)  # images with no CSV row: counted, not used
    missing: list[str] = field(default_factory=list)  # CSV names with no image in the source
    ambiguous: list[str] = field(default_factory=list)  # CSV names fitting several images

    def report_lines(self, limit: int = 5) -> list[str]:
        """Short warnings (count + first few names); empty when everything matched."""
        lines = []
        if self.unlabelled:
            lines.append(
                f"{len(self.unlabelled)} images have no row in the labels CSV and are not used: "
                f"{_first(self.unlabelled, limit)}"
            )
        if self.missing:
            lines.append(
                f"{len(self.missing)} labels CSV rows name files that are not in the images: "
                f"{_first(self.missing, limit)}"
            )
        if self.ambiguous:
            lines.append(
                f"{len(self.ambiguous)} labels CSV rows name a file that several images share; "
                f"write the path from the images root instead: {_first(self.ambiguous, limit)}"
            )
        return lines


def read_labels_csv(path: str | Path) -> LabelsTable:
    """Read a labels CSV in either layout (`service.labels_csv`). DataError naming the file and line."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such labels file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from exc
    try:
        table = read_labels(raw, name)
    except LabelsCsvError as exc:
        raise DataError(str(exc)) from None
    kind = "one-hot" if table.one_hot else "lists"
    log.info("%s: %d files, %d labels (%s)", name, len(table.rows), len(table.labels), kind)
    return LabelsTable(name, table.rows, table.labels, table.one_hot)


def load_labelled_set(images: Sequence[ImageFile], csv_path: str | Path) -> LabelledSet:
    """Read `csv_path` and match it to `images`: what the training and validation CSVs both go through."""
    return match_labels(images, read_labels_csv(csv_path))


def match_labels(images: Sequence[ImageFile], table: LabelsTable) -> LabelledSet:
    """Pair CSV rows with images. Raises DataError when no row names an image at all."""
    by_rel = {im.relpath: im for im in images}
    by_base: dict[str, list[ImageFile]] = defaultdict(list)
    for im in images:
        by_base[im.relpath.rsplit("/", 1)[-1]].append(im)
    found: dict[str, set[str]] = {}
    missing, ambiguous = [], []
    for key, labels in table.rows.items():
        if key in by_rel:  # an exact path wins over a trailing-part match elsewhere
            hits = [by_rel[key]]
        else:
            hits = [im for im in by_base.get(key.rsplit("/", 1)[-1], []) if im.relpath.endswith("/" + key)]
        if len(hits) == 1:
            found.setdefault(hits[0].relpath, set()).update(labels)  # two names, one image: merge
        else:
            (ambiguous if hits else missing).append(key)
    if not found:
        raise DataError(
            f"{table.source}: none of its {len(table.rows)} file names matches an image (CSV: "
            f"{_first(sorted(table.rows), 3)}; images: {_first(sorted(by_rel), 3)}); names must be paths "
            "from the images root, or bare file names"
        )
    samples = [Sample(by_rel[rel], frozenset(labels)) for rel, labels in sorted(found.items())]
    unlabelled = sorted(set(by_rel) - found.keys())
    return LabelledSet(samples, list(table.labels), unlabelled, sorted(missing), sorted(ambiguous))


def select_labels(
    ls: LabelledSet, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> LabelledSet:
    """Keep `include` (all when None or empty) minus `exclude`; dropped labels leave every sample.

    Samples are kept even when they lose all their labels: they are negatives for the kept labels.
    Always call it, even with no include/exclude: it is where a label with no positives is caught.
    """
    known = set(ls.labels)
    unknown = sorted({*(include or ()), *(exclude or ())} - known)
    if unknown:
        raise DataError(f"unknown labels {', '.join(unknown)}; the labels are: {_first(ls.labels, 50)}")
    keep = (set(include) if include else known) - set(exclude or ())
    if not keep:
        raise DataError("no labels left to train after --include/--exclude")
    samples = [Sample(s.image, s.labels & keep) for s in ls.samples]
    counts = Counter(label for s in samples for label in s.labels)
    empty = sorted(keep - counts.keys())
    if empty:
        raise DataError(
            f"no image is labelled {', '.join(empty)}; add positive images, or leave them out with "
            + " ".join(f"--exclude {label}" for label in empty)
        )
    everywhere = sorted(label for label in keep if counts[label] == len(samples))
    if everywhere:
        log.warning("every image is labelled %s: nothing to tell apart for them", ", ".join(everywhere))
    return LabelledSet(samples, sorted(keep), ls.unlabelled, ls.missing, ls.ambiguous)


def label_counts_table(train: Sequence[Sample], validation: Sequence[Sample], labels: Sequence[str]) -> str:
    """Plain-text table of positives per label and split, with an `images` totals row."""
    n_train = Counter(label for s in train for label in s.labels)
    n_val = Counter(label for s in validation for label in s.labels)
    header = ["label", "train", "validation", "total"]
    body = [[label, n_train[label], n_val[label], n_train[label] + n_val[label]] for label in labels]
    totals = ["images", len(train), len(validation), len(train) + len(validation)]
    width = [max(len(str(r[i])) for r in [header, *body, totals]) for i in range(4)]

    def line(cells: Sequence[object]) -> str:
        first = str(cells[0]).ljust(width[0])
        return "  ".join([first, *(str(c).rjust(w) for c, w in zip(cells[1:], width[1:], strict=True))])

    rule = line(["-" * w for w in width])
    return "\n".join([line(header), rule, *(line(r) for r in body), rule, line(totals)])


















def _first(names: Sequence[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")
