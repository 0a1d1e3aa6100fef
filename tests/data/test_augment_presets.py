"""The augmentation presets beyond ``standard``: trivialaugment, randaugment, autoaugment and random_erasing.

Each is seeded per item from ``(seed, epoch, index)`` like the built-in presets (the same item in the same epoch is
the same tensor in every dataset and run, another epoch is another draw), is never feature-cached, and trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_cli import run_dir, tiny_args
from torchvision.transforms import InterpolationMode, v2

from lit_transfer.cli import main
from lit_transfer.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lit_transfer.data.base import ImageFilesDataset
from lit_transfer.data.transforms import is_deterministic, tensor_op_interpolation, train_transform

NEW_PRESETS = ("trivialaugment", "randaugment", "autoaugment", "random_erasing")
AUGMENT_CLASSES = {
    "trivialaugment": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
    "autoaugment": v2.AutoAugment,
    "random_erasing": v2.RandomErasing,
}
ITEMS = [(index, epoch) for epoch in (0, 1) for index in range(4)]


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    """Four small textured RGB images of different sizes (so crops, flips and colour ops all show)."""
    rng = np.random.default_rng(3)
    names = []
    for i, size in enumerate([(40, 48), (48, 40), (36, 36), (64, 50)]):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        small.resize(size, Image.Resampling.BICUBIC).save(tmp_path / f"img_{i}.png")
        names.append(f"img_{i}.png")
    return names


def dataset(
    root: Path, names: list[str], preset: str, seed: int = 0, pre: int | Preprocessing = 32
) -> ImageFilesDataset:
    return ImageFilesDataset(root, names, [0] * len(names), train_transform(preset, pre), seed=seed)


def pre_with(interpolation: str, input_size: int = 40) -> Preprocessing:
    return Preprocessing(input_size, round(input_size / 0.875), 0.875, interpolation, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_is_seeded_per_item_and_epoch(tmp_path: Path, images: list[str], preset: str) -> None:
    first, second = dataset(tmp_path, images, preset), dataset(tmp_path, images, preset)
    a = {item: first[item][0] for item in ITEMS}
    torch.manual_seed(1234)  # the global RNG state must not matter, nor the order items are asked for
    b = {item: second[item][0] for item in reversed(ITEMS)}
    for item in ITEMS:
        assert a[item].dtype == torch.uint8 and a[item].shape == (3, 32, 32), item
        assert torch.equal(a[item], b[item]), f"{preset}: item {item} differs between two datasets"
        assert torch.equal(a[item], first[item][0]), f"{preset}: item {item} differs when asked again"
    assert all(not torch.equal(a[(i, 0)], a[(i, 1)]) for i in range(4)), f"{preset}: an epoch repeated a draw"
    other_seed = dataset(tmp_path, images, preset, seed=1)
    assert any(not torch.equal(a[item], other_seed[item][0]) for item in ITEMS)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_is_never_feature_cached(preset: str) -> None:
    assert not is_deterministic(train_transform(preset, 32))
    assert not is_deterministic(train_transform(preset, pre_with("bicubic")))


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_is_standard_then_its_augmentation(tmp_path: Path, images: list[str], preset: str) -> None:
    transform = train_transform(preset, 32)
    assert isinstance(transform, v2.Compose)
    assert [type(t) for t in transform.transforms] == [
        v2.PILToTensor, v2.RandomResizedCrop, v2.RandomHorizontalFlip, AUGMENT_CLASSES[preset]
    ]  # fmt: skip
    # the crop and flip draw first, as in ``standard``: with the same seeds the augmentation is the only change
    ours, standard = dataset(tmp_path, images, preset), dataset(tmp_path, images, "standard")
    changed = [item for item in ITEMS if not torch.equal(ours[item][0], standard[item][0])]
    assert changed, f"{preset} changed none of {len(ITEMS)} crops: its augmentation is not applied"
    if preset == "random_erasing":  # one rectangle per erased crop, filled with the mean colour, the rest untouched
        fill = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8)
        for item in changed:
            diff = (ours[item][0] != standard[item][0]).any(dim=0)
            rows, cols = diff.any(dim=1).nonzero()[:, 0], diff.any(dim=0).nonzero()[:, 0]
            box = ours[item][0][:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert (box == fill[:, None, None]).all(), item
            assert diff.sum() < diff.numel()  # never the whole crop (scale at most 0.33)


def test_random_erasing_uses_the_weights_mean_as_fill() -> None:
    pre = Preprocessing(32, 37, 0.875, "bilinear", (0.5, 0.25, 1.0), (0.5, 0.5, 0.5))
    erasing = train_transform("random_erasing", pre).transforms[-1]  # type: ignore[attr-defined]
    assert erasing.value == [128.0, 64.0, 255.0]
    assert erasing.p == 0.25


@pytest.mark.parametrize("preset", NEW_PRESETS)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_preset_takes_the_weights_size_and_interpolation(
    tmp_path: Path, images: list[str], preset: str, interpolation: str
) -> None:
    pre = pre_with(interpolation, input_size=40)
    transform = train_transform(preset, pre)
    crop = transform.transforms[1]  # type: ignore[attr-defined]
    expected = InterpolationMode.NEAREST_EXACT if interpolation == "nearest" else InterpolationMode(interpolation)
    assert crop.interpolation == expected and tuple(crop.size) == (40, 40)
    augment = transform.transforms[-1]  # type: ignore[attr-defined]
    if preset != "random_erasing":  # its rotations and shears run on tensors: nearest or bilinear only
        assert augment.interpolation == tensor_op_interpolation(expected)
    # every op at every magnitude must run on the uint8 tensor (bicubic and nearest-exact would raise in rotate)
    data = dataset(tmp_path, images, preset, pre=pre)
    for epoch in range(12):
        for index in range(len(images)):
            image = data[(index, epoch)][0]
            assert image.dtype == torch.uint8 and image.shape == (3, 40, 40)


def test_tensor_op_interpolation_keeps_what_tensors_support() -> None:
    assert tensor_op_interpolation(InterpolationMode.BILINEAR) == InterpolationMode.BILINEAR
    assert tensor_op_interpolation(InterpolationMode.NEAREST) == InterpolationMode.NEAREST
    assert tensor_op_interpolation(InterpolationMode.BICUBIC) == InterpolationMode.BILINEAR
    assert tensor_op_interpolation(InterpolationMode.NEAREST_EXACT) == InterpolationMode.NEAREST


def test_unknown_preset_lists_the_new_ones() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'trivial'") as err:
        train_transform("trivial", 32)
    for name in (*NEW_PRESETS, "standard", "seed002", "none"):
        assert f"'{name}'" in str(err.value)


def test_fit_with_trivialaugment(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, "--data.augmentation", "trivialaugment", epochs=1)])
    run = run_dir(in_tmp)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["augmentation"] == "trivialaugment"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] > 0
