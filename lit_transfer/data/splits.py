"""Stratified, seeded splits that depend on relative paths and the seed only; split manifests."""

from __future__ import annotations

import csv
import hashlib
import unicodedata
from collections import defaultdict
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


def _rank(seed: int, path: str) -> str:
    # A keyed hash orders files the same way on every machine, whatever order the file system lists them in and
    # whichever Unicode form (NFC on Linux, NFD on macOS) it spells their names in.
    return hashlib.sha256(f"{seed}:{unicodedata.normalize('NFC', path)}".encode()).hexdigest()


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` items go to each split for ``fractions`` (train, val, test), largest remainder rounding.

    Every split with a positive fraction gets at least one item when there are enough items for all of them, and
    train always keeps at least one.
    """
    total = sum(fractions)
    exact = [n * f / total for f in fractions]
    counts = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            while counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    if n > 0 and counts[0] == 0:
        donor = max(range(1, len(counts)), key=lambda j: counts[j])
        counts[donor] -= 1
        counts[0] += 1
    return counts


def stratified_split(
    files_by_class: dict[str, list[str]],
    class_names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[Sample]:
    """Split each class's files into train/val/test by the given fractions, stably for a seed."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum to less than 1"
        )
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        files = sorted(files_by_class.get(name, []), key=lambda p: _rank(seed, p))
        n_train, n_val, _ = split_counts(len(files), fractions)
        for i, path in enumerate(files):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            samples.append(Sample(path, label, split))
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
    """A short content hash of a split assignment, stored in checkpoints to tie them to their data."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.split, s.path)):
        h.update(f"{s.path}\t{class_names[s.label]}\t{s.split}\n".encode())
    return h.hexdigest()[:16]


def group_by_split(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples per split name, keeping order."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.split].append(s)
    return dict(out)
