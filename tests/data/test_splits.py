"""Seeded stratified splits, split counts and manifests."""

from __future__ import annotations

import csv
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from lit_transfer.data.splits import (
    SPLITS,
    Sample,
    group_by_split,
    manifest_hash,
    read_manifest,
    split_counts,
    stratified_split,
    write_manifest,
)

FRACTIONS = [
    (0.8, 0.2, 0.0),
    (0.7, 0.15, 0.15),
    (0.6, 0.2, 0.2),
    (0.9, 0.05, 0.05),
    (0.98, 0.01, 0.01),
    (0.34, 0.33, 0.33),
    (0.1, 0.45, 0.45),
    (1.0, 0.0, 0.0),
    (0.5, 0.0, 0.5),
]


def _files(per_class: dict[str, int]) -> dict[str, list[str]]:
    return {name: [f"{name}/img_{i:03d}.png" for i in range(n)] for name, n in per_class.items()}


# --------------------------------------------------------------------------- split_counts


@pytest.mark.parametrize("fractions", FRACTIONS)
def test_split_counts_properties(fractions: tuple[float, float, float]) -> None:
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    for n in range(60):
        counts = split_counts(n, fractions)
        assert len(counts) == 3
        assert sum(counts) == n, (n, counts)
        assert all(c >= 0 for c in counts), (n, counts)
        for i, f in enumerate(fractions):
            if f == 0 and i > 0:
                assert counts[i] == 0, f"a split with fraction 0 got items: n={n} {counts}"
        if n >= len(wanted):
            assert all(counts[i] >= 1 for i in wanted), (n, counts)
        if n >= 1:
            assert counts[0] >= 1, (n, counts)
        exact = [n * f / sum(fractions) for f in fractions]
        if all(exact[i] >= 1 for i in wanted):
            # no minimum had to be enforced: plain largest-remainder rounding, never off by a whole item
            assert all(abs(c - e) < 1 for c, e in zip(counts, exact, strict=True)), (n, counts, exact)


def test_split_counts_examples() -> None:
    assert split_counts(10, (0.8, 0.2, 0.0)) == [8, 2, 0]
    train, val, test = split_counts(10, (0.7, 0.15, 0.15))
    assert train == 7 and sorted((val, test)) == [1, 2]
    assert split_counts(3, (0.98, 0.01, 0.01)) == [1, 1, 1]
    assert split_counts(1, (0.2, 0.4, 0.4)) == [1, 0, 0]
    assert split_counts(2, (0.1, 0.45, 0.45))[0] == 1
    assert split_counts(0, (0.6, 0.2, 0.2)) == [0, 0, 0]


def test_split_counts_largest_remainder() -> None:
    # 7 * (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4): the one leftover goes to the largest remainder (train)
    assert split_counts(7, (0.5, 0.3, 0.2)) == [4, 2, 1]
    # 9 * (0.5, 0.3, 0.2) = (4.5, 2.7, 1.8): leftovers go to val (0.7) and test (0.8)
    assert split_counts(9, (0.5, 0.3, 0.2)) == [4, 3, 2]


# --------------------------------------------------------------------------- stratified_split


def test_stratified_split_partitions_every_file_once() -> None:
    files = _files({"a": 17, "b": 5, "c": 40})
    samples = stratified_split(files, ["a", "b", "c"], val_fraction=0.2, test_fraction=0.1, seed=0)
    paths = [s.path for s in samples]
    assert len(paths) == len(set(paths)), "a file landed in two splits"
    assert set(paths) == {p for ps in files.values() for p in ps}
    assert {s.split for s in samples} <= set(SPLITS)
    by_split = group_by_split(samples)
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {s.path for s in by_split.get(a, [])} & {s.path for s in by_split.get(b, [])}


def test_stratified_split_labels_follow_class_names() -> None:
    files = _files({"zeta": 4, "alpha": 4})
    names = ["zeta", "alpha"]  # label order is the order of class_names, not alphabetical
    samples = stratified_split(files, names, val_fraction=0.25, test_fraction=0.0, seed=1)
    for s in samples:
        assert names[s.label] == s.path.split("/")[0]


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.0), (0.15, 0.15), (0.1, 0.3), (0.01, 0.01)])
def test_stratified_split_is_stratified_per_class(val: float, test: float) -> None:
    per_class = {"a": 3, "b": 7, "c": 20, "d": 53, "e": 100}
    samples = stratified_split(_files(per_class), list(per_class), val, test, seed=3)
    fractions = (1 - val - test, val, test)
    got = Counter((s.path.split("/")[0], s.split) for s in samples)
    for name, n in per_class.items():
        counts = [got[(name, split)] for split in SPLITS]
        assert counts == split_counts(n, fractions), (name, counts)
        if all(n * f >= 1 for f in fractions if f > 0):
            # within rounding of the requested share
            assert all(abs(c - n * f) < 1 for c, f in zip(counts, fractions, strict=True)), (name, counts)


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_small_classes_reach_every_split(n: int) -> None:
    files = _files({"small": n, "big": 50})
    samples = stratified_split(files, ["small", "big"], val_fraction=0.1, test_fraction=0.1, seed=7)
    for label in (0, 1):
        splits = Counter(s.split for s in samples if s.label == label)
        assert all(splits[split] >= 1 for split in SPLITS), (label, splits)


def test_tiny_classes_keep_training_images() -> None:
    files = _files({"one": 1, "two": 2})
    samples = stratified_split(files, ["one", "two"], val_fraction=0.3, test_fraction=0.3, seed=0)
    assert [s.split for s in samples if s.label == 0] == ["train"]
    assert Counter(s.split for s in samples if s.label == 1)["train"] >= 1


def test_stratified_split_deterministic_and_seeded() -> None:
    files = _files({"a": 30, "b": 30})
    first = stratified_split(files, ["a", "b"], 0.2, 0.2, seed=42)
    again = stratified_split(_files({"a": 30, "b": 30}), ["a", "b"], 0.2, 0.2, seed=42)
    assert first == again
    other = stratified_split(files, ["a", "b"], 0.2, 0.2, seed=43)
    assert {(s.path, s.split) for s in first} != {(s.path, s.split) for s in other}
    # another seed moves files between splits but keeps the per-class counts
    assert Counter((s.label, s.split) for s in first) == Counter((s.label, s.split) for s in other)


def test_stratified_split_stable_under_shuffled_input() -> None:
    files = _files({"a": 23, "b": 11, "c": 9})
    reference = stratified_split(files, ["a", "b", "c"], 0.2, 0.1, seed=5)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = {}
        for name in rng.sample(list(files), len(files)):  # dict order shuffled too
            paths = list(files[name])
            rng.shuffle(paths)
            shuffled[name] = paths
        assert stratified_split(shuffled, ["a", "b", "c"], 0.2, 0.1, seed=5) == reference


def test_stratified_split_output_order() -> None:
    samples = stratified_split(_files({"a": 10, "b": 10}), ["a", "b"], 0.2, 0.2, seed=0)
    keys = [(SPLITS.index(s.split), s.path) for s in samples]
    assert keys == sorted(keys)


def test_stratified_split_does_not_mutate_input() -> None:
    files = _files({"a": 10})
    before = {k: list(v) for k, v in files.items()}
    stratified_split(files, ["a"], 0.2, 0.2, seed=0)
    assert files == before


@pytest.mark.parametrize(
    ("val", "test"),
    [(-0.1, 0.0), (0.0, -0.1), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.6, 0.5), (1.5, 0.0), (math.nan, 0.0)],
)
def test_invalid_fractions_raise(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(_files({"a": 10}), ["a"], val, test, seed=0)


# --------------------------------------------------------------------------- manifests


def test_manifest_round_trip(tmp_path: Path) -> None:
    names = ["cat", "dog, big", 'say "hi"']
    files = {
        "cat": ["cat/a.png", "cat/sub/b.png", "cat/c d.jpg"],
        "dog, big": ["dog, big/x,y.png", "dog, big/z.png", "dog, big/w.png"],
        'say "hi"': ['say "hi"/q.png', 'say "hi"/r.png', 'say "hi"/ü.png'],
    }
    samples = stratified_split(files, names, 0.34, 0.33, seed=0)
    path = tmp_path / "deep" / "er" / "split_manifest.csv"
    write_manifest(path, samples, names)

    assert path.is_file()
    assert not list(path.parent.glob("*.tmp")), "the temporary file was left behind"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class", "split"]
    assert len(rows) == len(samples) + 1

    back = read_manifest(path, names)
    assert back == samples
    assert manifest_hash(back, names) == manifest_hash(samples, names)


def test_manifest_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    write_manifest(path, [Sample("a/1.png", 0, "train")], ["a"])
    write_manifest(path, [Sample("a/2.png", 0, "val")], ["a"])
    assert read_manifest(path, ["a"]) == [Sample("a/2.png", 0, "val")]


def test_read_manifest_maps_through_class_names(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    write_manifest(path, [Sample("b/1.png", 1, "train"), Sample("a/1.png", 0, "val")], ["a", "b"])
    assert read_manifest(path, ["b", "a", "c"]) == [Sample("b/1.png", 0, "train"), Sample("a/1.png", 1, "val")]
    with pytest.raises(ValueError, match="'b'"):
        read_manifest(path, ["a"])


def test_manifest_hash_sensitive_to_every_assignment() -> None:
    names = ["a", "b"]
    samples = stratified_split(_files({"a": 10, "b": 10}), names, 0.2, 0.2, seed=0)
    base = manifest_hash(samples, names)
    assert len(base) == 16 and int(base, 16) >= 0

    shuffled = list(samples)
    random.Random(1).shuffle(shuffled)
    assert manifest_hash(shuffled, names) == base, "the hash must not depend on sample order"

    for i in (0, len(samples) // 2, len(samples) - 1):
        s = samples[i]
        moved = list(samples)
        moved[i] = Sample(s.path, s.label, "test" if s.split != "test" else "train")
        assert manifest_hash(moved, names) != base
        relabelled = list(samples)
        relabelled[i] = Sample(s.path, 1 - s.label, s.split)
        assert manifest_hash(relabelled, names) != base
        renamed = list(samples)
        renamed[i] = Sample(s.path + "x", s.label, s.split)
        assert manifest_hash(renamed, names) != base

    assert manifest_hash(samples[:-1], names) != base
    assert manifest_hash(samples, ["A", "b"]) != base  # class names are part of the content
    assert manifest_hash(samples, names) != manifest_hash(
        stratified_split(_files({"a": 10, "b": 10}), names, 0.2, 0.2, seed=1), names
    )


def test_group_by_split_keeps_order() -> None:
    samples = [Sample("x", 0, "val"), Sample("y", 0, "train"), Sample("z", 0, "val")]
    assert group_by_split(samples) == {"val": [samples[0], samples[2]], "train": [samples[1]]}
