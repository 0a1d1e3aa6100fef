"""Seeded stratified splits (each file by its own hash), their stability, and manifests."""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from lit_transfer.data.splits import (
    SPLITS,
    Sample,
    group_by_split,
    manifest_hash,
    read_manifest,
    split_intervals,
    split_value,
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


def _value(seed: int, path: str) -> float:
    # the rule written out again: sha256 of "seed:NFC(path)", its first 53 bits as a fraction of 1
    digest = hashlib.sha256(f"{seed}:{unicodedata.normalize('NFC', path)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def _by_value(seed: int, path: str, val: float, test: float) -> str:
    """The split a file's own value puts it in, before any fix-up."""
    u, train = _value(seed, path), 1 - val - test
    return "train" if u < train else "val" if u < train + val or test == 0 else "test"


def _assignment(samples: list[Sample]) -> dict[str, str]:
    return {s.path: s.split for s in samples}


def _empty_by_value(files: list[str], seed: int, val: float, test: float) -> set[str]:
    """Splits of one class that must keep a file but get none by value: the only ones the fix-up fills."""
    by_value = Counter(_by_value(seed, p, val, test) for p in files)
    wanted = [name for name, f in zip(SPLITS, (1 - val - test, val, test), strict=True) if f > 0]
    required = wanted if len(files) >= len(wanted) else ["train"] if files else []
    return {name for name in required if by_value[name] == 0}


def _fixed_up(files: list[str], assignment: dict[str, str], seed: int, val: float, test: float) -> set[str]:
    """Files of one class that the fix-up moved away from the split their own value gives: one per empty split."""
    moved = {p for p in files if assignment[p] != _by_value(seed, p, val, test)}
    empty = _empty_by_value(files, seed, val, test)
    assert len(moved) == len(empty) and {assignment[p] for p in moved} == empty, (files, moved, empty)
    return moved


# --------------------------------------------------------------------------- the per-file rule


def test_split_value_is_the_keyed_hash_in_the_unit_interval() -> None:
    for seed in (0, 1, 42):
        for i in range(200):
            path = f"cls/img_{i}.png"
            u = split_value(seed, path)
            assert 0 <= u < 1 and u == _value(seed, path)
    assert split_value(0, "a/x.png") != split_value(1, "a/x.png")
    assert split_value(0, "a/\u00fc.png") == split_value(0, "a/u\u0308.png")  # NFC and NFD spell the same name


@pytest.mark.parametrize("fractions", FRACTIONS)
def test_split_intervals_tile_the_unit_interval(fractions: tuple[float, float, float]) -> None:
    _, val, test = fractions
    intervals = split_intervals(val, test)
    assert intervals[0][0] == 0 and intervals[-1][1] == 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals))
    for (low, high), f in zip(intervals, fractions, strict=True):
        assert high - low == pytest.approx(f, abs=1e-12)
        if f == 0:
            assert low == high, "a split with fraction 0 must never get a file"


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.0), (0.15, 0.15), (0.1, 0.3), (0.01, 0.01), (0.0, 0.25)])
def test_each_file_follows_its_own_value(val: float, test: float) -> None:
    per_class = {"a": 3, "b": 7, "c": 20, "d": 53, "e": 100}
    files = _files(per_class)
    assignment = _assignment(stratified_split(files, list(per_class), val, test, seed=3))
    for name, paths in files.items():
        moved = _fixed_up(paths, assignment, 3, val, test)
        assert all(assignment[p] == _by_value(3, p, val, test) for p in paths if p not in moved), name
        if val == 0:
            assert "val" not in {assignment[p] for p in paths}
        if test == 0:
            assert "test" not in {assignment[p] for p in paths}


@pytest.mark.parametrize(("val", "test"), [(0.15, 0.15), (0.25, 0.25), (0.2, 0.0), (0.05, 0.1)])
def test_fractions_are_honoured_on_average(val: float, test: float) -> None:
    # each share is binomial: with 40,000 files its standard deviation is at most 0.0025, so 0.01 is 4 of them
    # (with 10,000 files 0.01 is only 2 standard deviations of a fraction of 0.5, too tight for a hash)
    n = 40_000
    files = {"big": [f"big/{i:05d}.jpg" for i in range(n)]}
    for seed in (0, 1, 2):
        counts = Counter(s.split for s in stratified_split(files, ["big"], val, test, seed=seed))
        for split, f in zip(SPLITS, (1 - val - test, val, test), strict=True):
            assert abs(counts[split] / n - f) < 0.01, (seed, split, counts)


# --------------------------------------------------------------------------- adding or removing files


def _trial_classes(rng: random.Random) -> dict[str, list[str]]:
    # random file names, so that the new files do not sort after the old ones
    return {f"c{k}": [f"c{k}/{rng.getrandbits(40):010x}.jpg" for _ in range(rng.randint(5, 50))] for k in range(4)}


TRIAL_FRACTIONS = [(0.2, 0.2), (0.15, 0.15), (0.25, 0.25), (0.1, 0.0), (0.05, 0.05)]


def _check_step(
    before: dict[str, list[str]], after: dict[str, list[str]], seed: int, val: float, test: float
) -> tuple[int, int]:
    """Files in both trees keep their split unless the fix-up moved them in one of the trees.

    Returns how many classes were compared and in how many an old file moved (which the fix-up explains).
    """
    names = sorted(before)
    old = _assignment(stratified_split(before, names, val, test, seed))
    new = _assignment(stratified_split(after, names, val, test, seed))
    moved_classes = 0
    for name in names:
        kept = set(before[name]) & set(after[name])
        moved = {p for p in kept if old[p] != new[p]}
        if not _empty_by_value(before[name], seed, val, test) and not _empty_by_value(after[name], seed, val, test):
            assert not moved, f"{sorted(moved)} changed split in class {name!r} of {len(before[name])} files"
        explained = _fixed_up(before[name], old, seed, val, test) | _fixed_up(after[name], new, seed, val, test)
        assert moved <= explained, f"{sorted(moved - explained)} changed split in class {name!r}"
        moved_classes += bool(moved)
    return len(names), moved_classes


def test_adding_files_moves_no_other_file() -> None:
    """30 trials of adding 1-5 files one by one to classes of 5-50 files, several seeds and fractions.

    An existing file never changes split, except a file the fix-up moved before or after the change: that needs a
    split that is empty by value, which is rare in a class of 10 or more files (at most (1 - fraction) ** n: 11 % of
    10 files at fraction 0.2, 1 % of 20) and common in a class of 3 to 5 files.
    """
    rng = random.Random(9)
    compared = moved = 0
    for trial in range(30):
        seed = trial % 7
        val, test = TRIAL_FRACTIONS[trial % len(TRIAL_FRACTIONS)]
        files = _trial_classes(rng)
        for _ in range(rng.randint(1, 5)):
            grown = {name: list(paths) for name, paths in files.items()}
            name = rng.choice(sorted(grown))
            grown[name].insert(rng.randrange(len(grown[name]) + 1), f"{name}/{rng.getrandbits(40):010x}.jpg")
            n, m = _check_step(files, grown, seed, val, test)
            compared, moved = compared + n, moved + m
            files = grown
    assert compared >= 4 * 30 and moved <= compared // 20, (compared, moved)


def test_removing_files_moves_no_other_file() -> None:
    rng = random.Random(10)
    compared = moved = 0
    for trial in range(30):
        seed = trial % 7
        val, test = TRIAL_FRACTIONS[trial % len(TRIAL_FRACTIONS)]
        files = _trial_classes(rng)
        for _ in range(rng.randint(1, 5)):
            shrunk = {name: list(paths) for name, paths in files.items()}
            name = rng.choice(sorted(shrunk))
            shrunk[name].pop(rng.randrange(len(shrunk[name])))
            n, m = _check_step(files, shrunk, seed, val, test)
            compared, moved = compared + n, moved + m
            files = shrunk
    assert compared >= 4 * 30 and moved <= compared // 20, (compared, moved)


def test_a_large_class_keeps_every_split_when_a_file_is_added() -> None:
    # 0.8 ** 40 < 1e-3: no split of these classes is empty by value, so nothing the fix-up does can move a file
    base = {"a": [f"a/{i:03d}.png" for i in range(40)], "b": [f"b/{i:03d}.png" for i in range(60)]}
    before = _assignment(stratified_split(base, ["a", "b"], 0.2, 0.2, seed=0))
    for extra in ("a/new.png", "b/new.png", "a/000 copy.png"):
        grown = {name: [*paths, extra] if extra.startswith(f"{name}/") else paths for name, paths in base.items()}
        after = _assignment(stratified_split(grown, ["a", "b"], 0.2, 0.2, seed=0))
        assert {p: after[p] for p in before} == before
        assert after[extra] == _by_value(0, extra, 0.2, 0.2)


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


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_small_classes_reach_every_split(n: int) -> None:
    files = _files({"small": n, "big": 50})
    samples = stratified_split(files, ["small", "big"], val_fraction=0.1, test_fraction=0.1, seed=7)
    for label in (0, 1):
        splits = Counter(s.split for s in samples if s.label == label)
        assert all(splits[split] >= 1 for split in SPLITS), (label, splits)


@pytest.mark.parametrize("n", [3, 4, 5, 6])
@pytest.mark.parametrize("fractions", FRACTIONS)
def test_minimum_holds_for_every_seed(n: int, fractions: tuple[float, float, float]) -> None:
    _, val, test = fractions
    wanted = [split for split, f in zip(SPLITS, fractions, strict=True) if f > 0]
    for seed in range(100):
        paths = [f"k/{seed}_{i}.png" for i in range(n)]
        assignment = _assignment(stratified_split({"k": paths}, ["k"], val, test, seed=seed))
        counts = Counter(assignment.values())
        assert all(counts[split] >= 1 for split in wanted), (seed, counts)
        assert set(counts) <= set(wanted), (seed, counts)
        _fixed_up(paths, assignment, seed, val, test)  # only where a split is empty by value, one file per split


def test_the_fix_up_moves_the_file_nearest_the_empty_split() -> None:
    val, test = 0.2, 0.2
    low, high = split_intervals(val, test)[1]
    checked = 0
    for seed in range(300):
        paths = [f"k/{seed}_{i}.png" for i in range(4)]
        by_value = Counter(_by_value(seed, p, val, test) for p in paths)
        if by_value["val"] or not by_value["train"] or not by_value["test"]:
            continue  # only val is empty by value: the fix-up moves exactly one file, into val
        nearest = min(paths, key=lambda p: max(low - _value(seed, p), _value(seed, p) - high))
        if by_value[_by_value(seed, nearest, val, test)] == 1:
            continue  # the nearest file is the last one of its split, which must keep it
        assignment = _assignment(stratified_split({"k": paths}, ["k"], val, test, seed=seed))
        assert [p for p in paths if assignment[p] == "val"] == [nearest], seed
        assert all(assignment[p] == _by_value(seed, p, val, test) for p in paths if p != nearest), seed
        checked += 1
    assert checked >= 20, checked


def test_tiny_classes_keep_training_images() -> None:
    files = _files({"one": 1, "two": 2})
    samples = stratified_split(files, ["one", "two"], val_fraction=0.3, test_fraction=0.3, seed=0)
    assert [s.split for s in samples if s.label == 0] == ["train"]
    assert Counter(s.split for s in samples if s.label == 1)["train"] >= 1
    for seed in range(100):
        for n in (1, 2):
            paths = [f"t/{seed}_{i}.png" for i in range(n)]
            splits = Counter(s.split for s in stratified_split({"t": paths}, ["t"], 0.45, 0.45, seed=seed))
            assert splits["train"] >= 1, (seed, n, splits)


def test_stratified_split_deterministic_and_seeded() -> None:
    files = _files({"a": 30, "b": 30})
    first = stratified_split(files, ["a", "b"], 0.2, 0.2, seed=42)
    again = stratified_split(_files({"a": 30, "b": 30}), ["a", "b"], 0.2, 0.2, seed=42)
    assert first == again
    other = stratified_split(files, ["a", "b"], 0.2, 0.2, seed=43)
    assert {(s.path, s.split) for s in first} != {(s.path, s.split) for s in other}


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


def test_stratified_split_independent_of_unicode_form() -> None:
    # macOS lists names in NFD, Linux keeps what was written (usually NFC): the same files get the same splits
    names = ["caf\u00e9", "\u00fcber", "se\u00f1or", "\u00c5ngstr\u00f6m", "na\u00efve", "x\u00e9y\u00e8z"]
    nfc = {"k": [f"k/{name}_{i}.png" for name in names for i in range(3)]}
    nfd = {"k": [unicodedata.normalize("NFD", p) for p in reversed(nfc["k"])]}
    assert all(unicodedata.normalize("NFD", p) != p for p in nfc["k"])
    for seed in range(5):
        a = _assignment(stratified_split(nfc, ["k"], 0.25, 0.25, seed=seed))
        b = _assignment(stratified_split(nfd, ["k"], 0.25, 0.25, seed=seed))
        assert {unicodedata.normalize("NFC", p): s for p, s in b.items()} == a


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
