"""Stratified, seeded splits that depend on relative paths and the seed only; split manifests."""

from __future__ import annotations

import csv
import hashlib
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled file of a split: ``path`` is relative to the data root, ``label`` indexes the class names."""

    path: str
    label: int
    split: str


def split_value(seed: int, path: str) -> float:
    """Where a file falls in [0, 1): a keyed hash of the seed and its relative path, the same on every machine.

    The path is NFC-normalized first, so the value does not depend on the Unicode form (NFC on Linux, NFD on macOS)
    a file system spells a name in.
    """
    digest = hashlib.sha256(f"{seed}:{unicodedata.normalize('NFC', path)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53  # 53 bits: exact in a float, always below 1


def split_intervals(val_fraction: float, test_fraction: float) -> list[tuple[float, float]]:
    """The ``[low, high)`` interval of :func:`split_value` that puts a file in train, val and test.

    Train is ``[0, f_train)``, val ``[f_train, f_train + f_val)`` and test the rest; a split with fraction 0 gets an
    empty interval, even where the sum of the fractions is rounded below 1.
    """
    train_end = 1.0 - val_fraction - test_fraction
    val_end = train_end + val_fraction if test_fraction else 1.0
    return [(0.0, train_end), (train_end, val_end), (val_end, 1.0)]


def _distance(u: float, interval: tuple[float, float]) -> float:
    low, high = interval
    return low - u if u < low else u - high if u >= high else 0.0


def _assign_class(files: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, int]:
    """Split index of each file of one class: its hash interval, then the fix-up for splits left empty."""
    intervals = split_intervals(fractions[1], fractions[2])
    value = {p: split_value(seed, p) for p in files}
    split = {p: next((i for i, (lo, hi) in enumerate(intervals) if lo <= u < hi), 0) for p, u in value.items()}
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    required = wanted if len(files) >= len(wanted) else [0] if files else []
    for i in required:
        counts = Counter(split.values())
        if counts[i]:
            continue
        # Take the file nearest the empty split's interval from a split that can spare it: one that keeps a file
        # when it is required. Only classes this reaches can see files move when files are added or removed.
        donors = [p for p in files if counts[split[p]] > (1 if split[p] in required else 0)]
        moved = min(donors, key=lambda p: (_distance(value[p], intervals[i]), value[p], p))
        split[moved] = i
    return split


def stratified_split(
    files_by_class: dict[str, list[str]],
    class_names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[Sample]:
    """Split each class's files into train/val/test, each file by its own :func:`split_value`, stably for a seed.

    A file goes to train if its value is below ``f_train = 1 - val_fraction - test_fraction``, to val if it is below
    ``f_train + val_fraction``, else to test (see :func:`split_intervals`), so adding or removing files never moves
    another file between splits, and each split's share matches its fraction on average (not exactly per class).

    The one exception, a fix-up that keeps the minimum: in a class with at least as many files as splits with a
    positive fraction, each such split left empty takes the file whose value is nearest its interval (from a split
    that keeps a file), and train always keeps a file. When a class grows or shrinks, only files this fix-up moved
    (at most two per class, before or after the change) can change split, so only in a class where a split would be
    empty by value, which has probability ``(1 - fraction) ** n`` for ``n`` files (1 % for 20 files at 0.2).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum to less than 1"
        )
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        split = _assign_class(files_by_class.get(name, []), fractions, seed)
        samples += [Sample(path, label, SPLITS[i]) for path, i in split.items()]
    return sorted(samples, key=lambda s: (SPLITS.index(s.split), s.path))


def write_manifest(path: str | Path, samples: Sequence[Sample], class_names: Sequence[str]) -> None:
    """Write ``relative path, class, split`` rows to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class", "split"])
        for s in samples:
            writer.writerow([s.path, class_names[s.label], s.split])
    tmp.replace(path)


def read_manifest(path: str | Path, class_names: Sequence[str]) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`; classes are mapped through ``class_names``."""
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["class"] not in index:
                raise ValueError(f"manifest {str(path)!r} names class {row['class']!r}, which the data does not have")
            samples.append(Sample(row["path"], index[row["class"]], row["split"]))
    return samples


def manifest_hash(samples: Sequence[Sample], class_names: Sequence[str]) -> str:
    """A short content hash of a split assignment, stored in checkpoints to tie them to their data.

    Paths are NFC-normalized, so the same files named in NFD (macOS) or NFC (Linux) give the same hash.
    """
    h = hashlib.sha256()
    rows = sorted((s.split, unicodedata.normalize("NFC", s.path), class_names[s.label]) for s in samples)
    for split, path, name in rows:
        h.update(f"{path}\t{name}\t{split}\n".encode())
    return h.hexdigest()[:16]


def group_by_split(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples per split name, keeping order."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.split].append(s)
    return dict(out)
