"""Caltech101DataModule: layouts, excluded categories, 50/25/25 splits, stable manifests, offline by default."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torchvision.datasets
from caltech_tree import CATEGORIES, CLASSES, GRAY, caltech_files, write_tree

from lit_transfer.data.caltech101 import Caltech101DataModule
from lit_transfer.data.images import find_images
from lit_transfer.data.splits import SPLITS, stratified_split

SMALL = {"image_size": 32, "batch_size": 4, "num_workers": 0}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any network connection or torchvision Caltech101 construction fails the test; returns the calls made."""
    calls: list[object] = []

    def no_connect(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test opened a network connection")

    def no_torchvision(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))
        raise AssertionError("torchvision's Caltech101 was constructed")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(torchvision.datasets, "Caltech101", no_torchvision)
    return calls


def _triples(dm: Caltech101DataModule) -> list[tuple[str, int, str]]:
    return [(s.path, s.label, s.split) for s in dm.samples]


def test_categories_exclude_background_and_faces_easy(caltech_factory: Callable[..., Path]) -> None:
    dm = Caltech101DataModule(root=str(caltech_factory()), **SMALL)
    assert dm.class_names == CLASSES
    assert dm.num_classes == 3
    assert dm.samples == []  # class names come from the folders alone
    everything = Caltech101DataModule(root=str(caltech_factory("all")), exclude=[], **SMALL)
    assert everything.class_names == sorted(CATEGORIES)


def test_splits_are_50_25_25_per_category_and_disjoint(caltech_factory: Callable[..., Path]) -> None:
    root = caltech_factory()
    dm = Caltech101DataModule(root=str(root), **SMALL)
    dm.setup("fit")
    per_split = {split: Counter(dm.class_names[s.label] for s in dm.samples if s.split == split) for split in SPLITS}
    for name in CLASSES:
        n = CATEGORIES[name] + (1 if name == "airplanes" else 0)  # the stray "image_0001 copy.jpg" is an image
        got = [per_split[split][name] for split in SPLITS]
        assert sum(got) == n and all(g >= 1 for g in got), (name, got)  # 3 or more images: one in every split
    # each image by its own hash with the 50/25/25 fractions (per-category counts follow them only on average)
    by_class = {name: [s.path for s in dm.samples if dm.class_names[s.label] == name] for name in dm.class_names}
    by_rule = stratified_split(by_class, dm.class_names, 0.25, 0.25, dm.seed)
    assert _triples(dm) == [(s.path, s.label, s.split) for s in by_rule]
    paths = {split: {s.path for s in dm.samples if s.split == split} for split in SPLITS}
    assert not paths["train"] & paths["val"] and not paths["train"] & paths["test"] and not paths["val"] & paths["test"]
    expected = {f"{c}/{p}" for c in CLASSES for p in find_images(root / "101_ObjectCategories" / c)}
    assert set().union(*paths.values()) == expected  # every image once; notes.txt never
    assert not any(p.endswith(".txt") or p.startswith(("BACKGROUND_Google/", "Faces_easy/")) for p in expected)
    assert all(p.split("/")[0] == dm.class_names[label] for p, label, _ in _triples(dm))
    assert len(dm._datasets["train"]) == len(paths["train"])


def test_manifest_is_independent_of_creation_order(caltech_factory: Callable[..., Path]) -> None:
    first = Caltech101DataModule(root=str(caltech_factory("a")), **SMALL)
    second = Caltech101DataModule(root=str(caltech_factory("b", reverse=True)), **SMALL)
    first.setup("fit")
    second.setup("fit")
    assert _triples(first) == _triples(second)
    assert first.manifest_hash == second.manifest_hash
    other_seed = Caltech101DataModule(root=str(caltech_factory("c")), seed=7, **SMALL)
    other_seed.setup("fit")
    assert _triples(other_seed) != _triples(first)


@pytest.mark.parametrize("layout", ["torchvision", "categories"])
def test_other_layouts_give_the_same_samples(caltech_factory: Callable[..., Path], layout: str) -> None:
    archive = Caltech101DataModule(root=str(caltech_factory("archive")), **SMALL)
    other = Caltech101DataModule(root=str(caltech_factory(layout, layout=layout)), **SMALL)
    archive.setup("fit")
    other.setup("fit")
    assert other.class_names == CLASSES
    assert _triples(other) == _triples(archive)
    assert other.data_root.name == "101_ObjectCategories"


def test_plain_class_folder_tree_is_accepted(tree_factory: Callable[..., Path]) -> None:
    dm = Caltech101DataModule(root=str(tree_factory("plain", per_class=4)), **SMALL)
    assert dm.class_names == ["blue", "green", "red"]
    dm.setup("fit")
    assert len(dm.samples) == 12
    by_class = {n: [s.path for s in dm.samples if s.label == i] for i, n in enumerate(dm.class_names)}
    expected = stratified_split(by_class, dm.class_names, 0.25, 0.25, dm.seed)  # 50/25/25, each file by its hash
    assert _triples(dm) == [(s.path, s.label, s.split) for s in expected]
    assert Counter((s.label, s.split) for s in dm.samples).keys() == {(i, x) for i in range(3) for x in SPLITS}


def test_grayscale_jpeg_becomes_rgb(caltech_factory: Callable[..., Path]) -> None:
    dm = Caltech101DataModule(root=str(caltech_factory()), **SMALL)
    dm.setup("fit")
    sample = next(s for s in dm.samples if s.path == GRAY)
    dataset = dm._datasets[sample.split]
    image, label = dataset[dataset.paths.index(GRAY)][:2]
    assert tuple(image.shape) == (3, 32, 32) and label == dm.class_names.index("accordion")
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape[1:] == (3, 32, 32)


def test_fractions_are_validated_and_normalized(caltech_factory: Callable[..., Path]) -> None:
    root = str(caltech_factory())
    for bad in ([0.5, 0.5], [-0.5, 0.25, 0.25], [0, 0, 0], [0, 0.5, 0.5], [float("nan"), 1, 1]):
        with pytest.raises(ValueError, match="fractions"):
            Caltech101DataModule(root=root, fractions=bad, **SMALL)
    scaled = Caltech101DataModule(root=root, fractions=[2, 1, 1], **SMALL)
    default = Caltech101DataModule(root=root, **SMALL)
    scaled.setup("fit")
    default.setup("fit")
    assert _triples(scaled) == _triples(default)
    no_test = Caltech101DataModule(root=root, fractions=[0.8, 0.2, 0], **SMALL)
    no_test.setup("fit")
    assert {s.split for s in no_test.samples} == {"train", "val"}


def test_missing_data_without_download_names_root_and_layouts(tmp_path: Path, offline: list[object]) -> None:
    with pytest.raises(FileNotFoundError) as err:
        Caltech101DataModule(root=str(tmp_path / "nowhere"), **SMALL)
    message = str(err.value)
    assert "nowhere" in message and "101_ObjectCategories" in message and "caltech101" in message
    assert "download true" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        Caltech101DataModule(root=str(tmp_path / "empty"), **SMALL)
    assert offline == []


def test_only_excluded_categories_is_an_error(tmp_path: Path) -> None:
    files = {k: v for k, v in caltech_files().items() if k.startswith(("BACKGROUND_Google/", "Faces_easy/"))}
    root = write_tree(tmp_path / "only_bg" / "101_ObjectCategories", files).parent
    with pytest.raises(ValueError, match="no categories left"):
        Caltech101DataModule(root=str(root), **SMALL)


def test_download_goes_through_torchvision_only_when_data_is_missing(
    tmp_path: Path, caltech_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []

    class FakeCaltech101:  # stands in for torchvision's class: extracts into <root>/caltech101/
        def __init__(self, root: str, download: bool = False) -> None:
            calls.append((root, download))
            write_tree(Path(root) / "caltech101" / "101_ObjectCategories", caltech_files())

    monkeypatch.setattr(torchvision.datasets, "Caltech101", FakeCaltech101)
    present = Caltech101DataModule(root=str(caltech_factory()), download=True, **SMALL)
    assert calls == [] and present.class_names == CLASSES
    fresh = Caltech101DataModule(root=str(tmp_path / "fresh"), download=True, **SMALL)
    assert len(calls) == 1 and calls[0][1]
    assert Path(calls[0][0]).parent == tmp_path / "fresh"  # a temporary folder, renamed into place when complete
    assert fresh.class_names == CLASSES
    fresh.setup("fit")
    assert len(fresh.samples) == sum(CATEGORIES[c] for c in CLASSES) + 1


def test_download_import_error_says_to_install_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def needs_scipy(*args: object, **kwargs: object) -> None:
        raise ImportError("No module named 'scipy'")

    monkeypatch.setattr(torchvision.datasets, "Caltech101", needs_scipy)
    with pytest.raises(ImportError, match="pip install scipy"):
        Caltech101DataModule(root=str(tmp_path / "fresh"), download=True, **SMALL)
