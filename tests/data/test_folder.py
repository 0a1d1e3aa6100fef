"""ImageFolderDataModule: class folders, split modes, loaders, predict folder and error messages."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.data.images import BadImageError
from lit_transfer.data.splits import SPLITS, Sample, stratified_split

CLASSES = ("red", "green", "blue")  # sorted: blue, green, red
SMALL = {"image_size": 32, "batch_size": 4, "num_workers": 0}


def _write(path: Path, value: int = 100, size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(value).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _triples(dm: ImageFolderDataModule) -> set[tuple[str, int, str]]:
    return {(s.path, s.label, s.split) for s in dm.samples}


def _class_of(path: str, dm: ImageFolderDataModule) -> int:
    """The label a sample path should have: the index of the class folder it lies in."""
    parts = path.split("/")
    names = [p for p in parts if p in dm.class_names]
    assert names, path
    return dm.class_names.index(names[0])


# --------------------------------------------------------------------------- construction


def test_class_names_known_after_init(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "__MACOSX").mkdir()
    dm = ImageFolderDataModule(root=str(root), **SMALL)
    assert dm.class_names == ["blue", "green", "red"]
    assert dm.num_classes == 3
    assert dm.samples == []  # nothing scanned yet beyond the class folders
    assert dm.manifest_hash is None


def test_root_and_train_dir_are_exclusive(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    with pytest.raises(ValueError, match="exactly one"):
        ImageFolderDataModule(root=str(root), train_dir=str(root), **SMALL)
    with pytest.raises(ValueError, match="exactly one"):
        ImageFolderDataModule(**SMALL)
    with pytest.raises(ValueError, match="val_dir"):
        ImageFolderDataModule(root=str(root), val_dir=str(root), **SMALL)


def test_unknown_augmentation_lists_presets(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    with pytest.raises(ValueError, match="no_such_preset") as info:
        ImageFolderDataModule(root=str(root), augmentation="no_such_preset", **SMALL)
    for preset in ("standard", "seed002", "none"):
        assert preset in str(info.value)


def test_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere"), **SMALL)


def test_root_without_class_folders(tmp_path: Path) -> None:
    _write(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataModule(root=str(tmp_path / "flat"), **SMALL)


def test_empty_class_folder_names_it(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    (root / "purple" / ".ipynb_checkpoints").mkdir(parents=True)
    (root / "purple" / "notes.txt").write_text("only notes here")
    dm = ImageFolderDataModule(root=str(root), **SMALL)
    assert "purple" in dm.class_names
    with pytest.raises(ValueError, match="purple"):
        dm.setup("fit")


# --------------------------------------------------------------------------- root mode


def test_root_mode_splits_stratified(tree_factory: Callable[..., Path]) -> None:
    per_class = {"red": 10, "green": 7, "blue": 4}
    root = tree_factory("data", per_class=per_class)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, test_fraction=0.2, seed=3, **SMALL)
    dm.setup("fit")

    assert dm.data_root == root.resolve()
    paths = [s.path for s in dm.samples]
    assert len(paths) == len(set(paths)) == sum(per_class.values())
    assert all((dm.data_root / p).is_file() for p in paths)
    for s in dm.samples:
        assert dm.class_names[s.label] == s.path.split("/")[0]
    got = Counter((dm.class_names[s.label], s.split) for s in dm.samples)
    for name in per_class:
        assert all(got[(name, split)] >= 1 for split in SPLITS), (name, got)  # 3 or more images: one in every split
    # each image by its own hash with the module's fractions and seed (per-class counts follow them on average)
    by_class = {name: [s.path for s in dm.samples if dm.class_names[s.label] == name] for name in dm.class_names}
    assert set(dm.samples) == set(stratified_split(by_class, dm.class_names, 0.2, 0.2, seed=3))

    assert set(dm._datasets) == set(SPLITS)
    for split in SPLITS:
        ds = dm._datasets[split]
        expected = [s for s in dm.samples if s.split == split]
        assert ds.paths == [s.path for s in expected]
        assert ds.targets == [s.label for s in expected]
        assert ds.root == dm.data_root
    assert dm.manifest_hash is not None and len(dm.manifest_hash) == 16


def test_setup_twice_keeps_assignment(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=5)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, test_fraction=0.2, **SMALL)
    dm.setup("fit")
    first = list(dm.samples)
    dm.setup("test")
    assert dm.samples == first


def test_seed_changes_assignment(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=12)
    a = ImageFolderDataModule(root=str(root), val_fraction=0.25, seed=0, **SMALL)
    b = ImageFolderDataModule(root=str(root), val_fraction=0.25, seed=1, **SMALL)
    a.setup("fit")
    b.setup("fit")
    assert _triples(a) != _triples(b)
    # each file is placed by its own hash, so the per-class counts may change with the seed too; every class keeps val
    for dm in (a, b):
        assert {s.label for s in dm.samples if s.split == "val"} == {0, 1, 2}


def test_manifest_independent_of_creation_order(tmp_path: Path) -> None:
    names = [(cls, f"img_{i:02d}.png") for cls in CLASSES for i in range(7)]
    names.append(("red", "deeper/extra.jpg"))
    for folder, order in (("first", names), ("second", list(reversed(names)))):
        for i, (cls, name) in enumerate(order):
            _write(tmp_path / folder / cls / name, value=i)  # different pixels too: only paths may matter

    dms = []
    for folder in ("first", "second"):
        dm = ImageFolderDataModule(root=str(tmp_path / folder), val_fraction=0.2, test_fraction=0.2, **SMALL)
        dm.setup("fit")
        dms.append(dm)
    assert _triples(dms[0]) == _triples(dms[1])
    assert dms[0].samples == dms[1].samples
    assert dms[0].manifest_hash == dms[1].manifest_hash
    assert {s.split for s in dms[0].samples} == set(SPLITS)


# --------------------------------------------------------------------------- split folders


def test_split_folders_share_one_class_index(tree_factory: Callable[..., Path]) -> None:
    train = tree_factory("train", per_class=4)
    val = tree_factory("val", per_class=2, classes=("red", "blue"))  # lacks green: fine
    test = tree_factory("test", per_class=2, classes=("green",))
    dm = ImageFolderDataModule(train_dir=str(train), val_dir=str(val), test_dir=str(test), **SMALL)
    assert dm.class_names == ["blue", "green", "red"]
    dm.setup("fit")

    by_split = Counter(s.split for s in dm.samples)
    assert by_split == {"train": 12, "val": 4, "test": 2}
    for s in dm.samples:
        top = s.path.split("/")[0]
        assert top == s.split, f"{s} came from the wrong folder"
        assert s.label == _class_of(s.path, dm)
        assert (dm.data_root / s.path).is_file()
    assert {s.label for s in dm.samples if s.split == "val"} == {0, 2}
    assert {s.label for s in dm.samples if s.split == "test"} == {1}


@pytest.mark.parametrize("key", ["val_dir", "test_dir"])
def test_split_folder_with_extra_class_is_an_error(tree_factory: Callable[..., Path], key: str) -> None:
    train = tree_factory("train", per_class=2)
    other = tree_factory("other", per_class=1, classes=("red", "purple"))
    with pytest.raises(ValueError, match="purple") as info:
        ImageFolderDataModule(train_dir=str(train), **{key: str(other)}, **SMALL)
    assert key in str(info.value)


def test_missing_val_dir_is_carved_from_train(tree_factory: Callable[..., Path]) -> None:
    train = tree_factory("train", per_class=8)
    test = tree_factory("test", per_class=2)
    dm = ImageFolderDataModule(train_dir=str(train), test_dir=str(test), val_fraction=0.25, test_fraction=0.5, **SMALL)
    dm.setup("fit")
    got = Counter((s.path.split("/")[0], s.split) for s in dm.samples)
    # val comes out of train by val_fraction, each file by its own hash; test_fraction is ignored (test_dir is given)
    assert got[("train", "train")] + got[("train", "val")] == 24 and got[("test", "test")] == 6 and len(got) == 3
    carved = [s for s in dm.samples if s.path.startswith("train/")]
    names = dm.class_names
    by_class = {name: [s.path.removeprefix("train/") for s in carved if s.label == i] for i, name in enumerate(names)}
    expected = stratified_split(by_class, names, 0.25, 0.0, dm.seed)
    assert set(carved) == {Sample(f"train/{s.path}", s.label, s.split) for s in expected}
    for s in dm.samples:
        assert s.label == _class_of(s.path, dm)
    per_class_val = Counter(s.label for s in dm.samples if s.split == "val")
    assert set(per_class_val) == {0, 1, 2}  # every class keeps a val image


def test_train_dir_alone(tree_factory: Callable[..., Path]) -> None:
    train = tree_factory("train", per_class=5)
    dm = ImageFolderDataModule(train_dir=str(train), val_fraction=0.2, **SMALL)
    dm.setup("fit")
    assert dm.data_root == train.resolve()
    assert len(dm.samples) == 15 and {s.split for s in dm.samples} == {"train", "val"}
    by_class = {n: [s.path for s in dm.samples if s.label == i] for i, n in enumerate(dm.class_names)}
    assert set(dm.samples) == set(stratified_split(by_class, dm.class_names, 0.2, 0.0, dm.seed))  # the per-file rule
    assert {s.label for s in dm.samples if s.split == "val"} == {0, 1, 2}


# --------------------------------------------------------------------------- loaders and transforms


@pytest.mark.parametrize("augmentation", ["standard", "seed002", "none"])
def test_loaders_yield_uint8_batches(tree_factory: Callable[..., Path], augmentation: str) -> None:
    root = tree_factory("data", per_class=4)
    dm = ImageFolderDataModule(
        root=str(root), val_fraction=0.25, test_fraction=0.25, augmentation=augmentation, **SMALL
    )
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        images, labels = batch[0], batch[1]
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (3, 32, 32)
        assert 1 <= images.shape[0] <= 4
        assert labels.dtype == torch.int64
        assert labels.shape == (images.shape[0],)
        assert int(labels.min()) >= 0 and int(labels.max()) < dm.num_classes


def test_val_loader_in_manifest_order(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=4)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.5, **SMALL)
    dm.setup("fit")
    labels = torch.cat([batch[1] for batch in dm.val_dataloader()])
    assert labels.tolist() == [s.label for s in dm.samples if s.split == "val"]


def test_empty_split_loader_is_an_error(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=4)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.25, test_fraction=0.0, **SMALL)
    dm.setup("fit")
    with pytest.raises(ValueError, match="test split is empty"):
        dm.test_dataloader()


def test_eval_transform_is_deterministic(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=4)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.25, **SMALL)
    dm.setup("fit")
    ds = dm._datasets["val"]
    for i in range(len(ds)):
        a, ya = ds[i][:2]
        b, yb = ds[i][:2]
        assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
        assert torch.equal(a, b) and ya == yb


def test_eval_transform_keeps_colour(tmp_path: Path) -> None:
    # one solid colour per class: after resize and crop the pixels must be unchanged (RGB order, no scaling)
    colours = {"a": (200, 10, 30), "b": (5, 180, 90)}
    for cls, colour in colours.items():
        for i in range(3):
            path = tmp_path / "data" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (50, 40), colour).save(path)
    dm = ImageFolderDataModule(root=str(tmp_path / "data"), val_fraction=0.34, **SMALL)
    dm.setup("fit")
    ds = dm._datasets["val"]
    for i in range(len(ds)):
        x, y = ds[i][:2]
        expected = torch.tensor(colours[dm.class_names[y]], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32)
        assert torch.equal(x, expected)


# --------------------------------------------------------------------------- predict


def test_predict_dir_lists_images_with_index_targets(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    root = tree_factory("data", per_class=2)
    pred = tmp_path / "pred"
    for i, rel in enumerate(["z.png", "a.jpg", "sub/m.png", "sub/deeper/b.bmp"]):
        _write(pred / rel, value=i, size=(24, 20))
    (pred / "notes.txt").write_text("skip me")
    _write(pred / ".ipynb_checkpoints" / "a-checkpoint.png")
    dm = ImageFolderDataModule(root=str(root), predict_dir=str(pred), **SMALL)
    dm.setup("predict")

    assert dm.predict_paths == ["a.jpg", "sub/deeper/b.bmp", "sub/m.png", "z.png"]
    ds = dm._datasets["predict"]
    assert list(ds.targets) == [0, 1, 2, 3]
    x, target = ds[2][:2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and target == 2
    batches = list(dm.predict_dataloader())
    targets = torch.cat([batch[1] for batch in batches])
    assert targets.tolist() == [0, 1, 2, 3]
    assert all(batch[0].shape[1:] == (3, 32, 32) for batch in batches)
    assert "train" not in dm._datasets  # predicting scans no training data


def test_predict_needs_a_folder_with_images(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    root = tree_factory("data", per_class=2)
    with pytest.raises(ValueError, match="predict_dir"):
        ImageFolderDataModule(root=str(root), **SMALL).setup("predict")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataModule(root=str(root), predict_dir=str(empty), **SMALL).setup("predict")


# --------------------------------------------------------------------------- unreadable files


def _item_index(dm: ImageFolderDataModule, rel: str) -> tuple[str, int]:
    hits = [(split, ds.paths.index(rel)) for split, ds in dm._datasets.items() if rel in ds.paths]
    assert len(hits) == 1, hits
    return hits[0]


def test_corrupt_file_error_names_it_when_read(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    (root / "green" / "broken_one.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    # no header screening at setup: the file is met only when its item is read
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, check_images=False, bad_images="error", **SMALL)
    dm.setup("fit")
    split, index = _item_index(dm, "green/broken_one.png")
    with pytest.raises(BadImageError, match=re.escape(str(dm.data_root / "green" / "broken_one.png"))):
        dm._datasets[split][index]
    # the other files of that split still load
    ds = dm._datasets[split]
    x = ds[next(i for i in range(len(ds)) if i != index)][0]
    assert x.shape == (3, 32, 32)


def test_truncated_file_error_names_it_when_read(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    path = root / "red" / "img_000.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact: only decoding finds the damage
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.0, bad_images="error", **SMALL)
    dm.setup("fit")
    split, index = _item_index(dm, "red/img_000.png")
    with pytest.raises(BadImageError, match=re.escape("img_000.png")):
        dm._datasets[split][index]


def test_unreadable_header_found_at_setup_names_file(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("data", per_class=3)
    (root / "blue" / "not_an_image.jpg").write_bytes(b"plain text with a .jpg name")
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, bad_images="error", **SMALL)
    with pytest.raises(BadImageError, match=re.escape("not_an_image.jpg")):
        dm.setup("fit")


def test_unicode_forms_of_class_names_give_the_same_classes_and_splits(tree_factory) -> None:
    import unicodedata

    from lit_transfer.data import ImageFolderDataModule

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    splits = []
    for i, spelling in enumerate((nfc, nfd)):
        root = tree_factory(f"tree{i}", per_class=9, classes=(spelling, "red", "blue"))
        dm = ImageFolderDataModule(root=str(root), image_size=32, num_workers=0, val_fraction=0.3)
        assert dm.class_names == ["blue", nfc, "red"]
        dm.setup("fit")
        splits.append({(unicodedata.normalize("NFC", s.path), s.label, s.split) for s in dm.samples})
    assert splits[0] == splits[1]


def test_default_loader_workers_are_shared_by_the_processes_of_a_node(image_tree: Path) -> None:
    from types import SimpleNamespace

    auto = ImageFolderDataModule(root=str(image_tree))
    auto.num_workers = 8  # as if the process may use 8 cores
    assert auto.loader_workers() == 8
    auto.trainer = SimpleNamespace(num_devices=4)  # type: ignore[assignment]
    assert auto.loader_workers() == 2
    explicit = ImageFolderDataModule(root=str(image_tree), num_workers=8)
    explicit.trainer = SimpleNamespace(num_devices=4)  # type: ignore[assignment]
    assert explicit.loader_workers() == 8  # a number the user gave is per process, as documented
