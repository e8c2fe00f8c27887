"""Train/validation splits: stratified for multi-label data, or the user's own validation set.

A random split of multi-label data easily leaves a rare label with no validation image (so its
threshold and metrics are meaningless) or no training image (so it cannot be learnt). Iterative
stratification (Sechidis, Tsoumakas & Vlahavas, 2011) deals out the rarest label first, each image to
the side that still needs that label most; on top of it, every label with at least two positives is
put on both sides, even when that moves the validation size a little off `val_size`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence

from training.data.labels import LabelledSet, Sample
from training.data.sources import DataError

log = logging.getLogger(__name__)

TRAIN, VAL = 0, 1
_SIDES = (TRAIN, VAL)


def split_samples(
    samples: Sequence[Sample], labels: Sequence[str], *, val_size: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Return (train, validation), both sorted by relpath; the same input and seed give the same split.

    Input order does not matter. Only `labels` are stratified on; samples with none of them fill the
    sides up to their target sizes. Putting every label with >= 2 positives on both sides is not always
    possible (three images labelled {a,b}, {b,c}, {a,c}); what cannot be done is logged as a warning.
    """
    if not 0 < val_size < 1:
        raise DataError(f"val_size must be between 0 and 1 (exclusive), not {val_size}")
    if len(samples) < 2:
        raise DataError(f"{len(samples)} labelled images: need at least 2 to hold some out for validation")
    rng = random.Random(seed)
    order = sorted(samples, key=lambda s: s.image.relpath)
    rng.shuffle(order)
    label_set = set(labels)
    label_lists = [sorted(s.labels & label_set) for s in order]
    side = _Stratifier(label_lists, sorted(label_set), val_size, rng).run()
    _cover_both_sides(label_lists, side)
    train = [s for s, k in zip(order, side, strict=True) if k == TRAIN]
    val = [s for s, k in zip(order, side, strict=True) if k == VAL]
    return _by_name(train), _by_name(val)


def user_split(ls: LabelledSet, validation: LabelledSet) -> tuple[list[Sample], list[Sample]]:
    """Return (train, validation) with the validation images chosen by the user.

    `validation` is a second labels CSV (same format) matched against the same images, e.g.
    `load_labelled_set(images, "val.csv")`. Its images form the validation side with *its* labels,
    restricted to `ls.labels` (a label not trained cannot be evaluated); they are removed from `ls`'s
    samples, and the rest is the training side. Pass `ls` after `select_labels`.
    """
    keep = set(ls.labels)
    val = _by_name([Sample(s.image, s.labels & keep) for s in validation.samples])
    ignored = sorted(set(validation.labels) - keep)
    if ignored:
        log.info("validation labels not being trained, ignored: %s", ", ".join(ignored))
    taken = {s.image.relpath for s in val}
    train = [s for s in ls.samples if s.image.relpath not in taken]
    if not train:
        raise DataError("every labelled image is in the validation CSV; nothing is left to train on")
    counts = Counter(label for s in train for label in s.labels)
    empty = [label for label in ls.labels if not counts[label]]
    if empty:
        raise DataError(
            f"no training image is labelled {', '.join(empty)} once the validation images are taken out; "
            "move some to training, or leave them out with " + " ".join(f"--exclude {x}" for x in empty)
        )
    val_counts = Counter(label for s in val for label in s.labels)
    absent = [label for label in ls.labels if not val_counts[label]]
    if absent:
        log.warning("no validation image is labelled %s: their metrics will be undefined", ", ".join(absent))
    return _by_name(train), val


class _Stratifier:
    """Sechidis et al.'s iterative stratification over two sides, plus 'one positive on each side first'."""

    def __init__(self, label_lists: list[list[str]], labels: list[str], val_size: float, rng: random.Random):
        n = len(label_lists)
        n_val = min(max(round(n * val_size), 1), n - 1)
        ratio = ((n - n_val) / n, n_val / n)
        self.label_lists, self.rng = label_lists, rng
        self.side = [-1] * n
        self.want = [float(n - n_val), float(n_val)]  # images each side still wants
        self.members: dict[str, list[int]] = {label: [] for label in labels}
        for i, names in enumerate(label_lists):
            for label in names:
                self.members[label].append(i)
        self.total = {label: len(m) for label, m in self.members.items()}
        self.left = dict(self.total)  # positives not yet dealt
        self.want_label = {label: [c * ratio[0], c * ratio[1]] for label, c in self.total.items()}
        self.have = {label: [0, 0] for label in labels}

    def run(self) -> list[int]:
        while any(self.left.values()):
            label = min((x for x, c in self.left.items() if c), key=lambda x: (self.left[x], x))
            for i in self.members[label]:
                if self.side[i] < 0:
                    self._assign(i, self._pick(label))
        for i, k in enumerate(self.side):
            if k < 0:  # no stratified label: fill whichever side is furthest from its size
                self._assign(i, self._best(lambda s: (self.want[s],)))
        return self.side

    def _pick(self, label: str) -> int:
        lacking = [s for s in _SIDES if not self.have[label][s]]
        if self.total[label] >= 2 and len(lacking) == 1:
            return lacking[0]
        return self._best(lambda s: (self.want_label[label][s], self.want[s]))

    def _best(self, key: Callable[[int], tuple[float, ...]]) -> int:
        # Rounded so that float noise (1.6 - 1 vs 0.6) is a tie, broken by the seeded rng.
        score = {s: tuple(round(v, 9) for v in key(s)) for s in _SIDES}
        top = max(score.values())
        return self.rng.choice([s for s in _SIDES if score[s] == top])

    def _assign(self, i: int, s: int) -> None:
        self.side[i] = s
        self.want[s] -= 1
        for label in self.label_lists[i]:
            self.want_label[label][s] -= 1
            self.have[label][s] += 1
            self.left[label] -= 1


def _cover_both_sides(label_lists: list[list[str]], side: list[int]) -> None:
    """Move images so every label with >= 2 positives, and each side, has at least one image.

    Needed when a label's images were all dealt while distributing rarer labels that share them.
    Only moves that leave every label still covered on the side it leaves are made, so it terminates.
    """
    have: dict[str, list[int]] = {}
    for names, k in zip(label_lists, side, strict=True):
        for label in names:
            have.setdefault(label, [0, 0])[k] += 1
    for label in sorted(have, key=lambda x: (sum(have[x]), x)):
        for k in _SIDES:
            if sum(have[label]) >= 2 and not have[label][k]:
                _move_one(label_lists, side, have, [label], k, label)
    for k in _SIDES:
        if k not in side:
            _move_one(label_lists, side, have, [], k, "an image")


def _move_one(
    label_lists: list[list[str]],
    side: list[int],
    have: dict[str, list[int]],
    need: list[str],
    to: int,
    what: str,
) -> None:
    other = 1 - to
    candidates = [
        i
        for i, names in enumerate(label_lists)
        if side[i] == other
        and all(x in names for x in need)
        and all(have[x][other] >= 2 or sum(have[x]) < 2 for x in names)
    ]
    if not candidates:
        log.warning("could not put %s on the %s side", what, "validation" if to == VAL else "training")
        return
    i = min(candidates, key=lambda j: (len(label_lists[j]), j))  # fewest labels: least disturbance
    side[i] = to
    for x in label_lists[i]:
        have[x][other] -= 1
        have[x][to] += 1


def _by_name(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: s.image.relpath)
