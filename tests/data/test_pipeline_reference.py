"""Our pipeline (uint8 transform, reduced-size JPEG decoding, normalization in the model) against the reference one.

The reference is the seed tutorials' pipeline: PIL decode at full size, ``Resize`` + ``CenterCrop`` on the PIL image,
``ToTensor`` and ``Normalize``. Ours must give tensors of the same shape, dtype and range, showing the same picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lit_transfer.data.base import ImageFilesDataset, collate_skipping_bad
from lit_transfer.data.transforms import eval_transform, train_transform
from lit_transfer.models import TransferClassifier

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo(path: Path, size: tuple[int, int]) -> Path:
    """A smooth photo-like JPEG (low-resolution noise upscaled), as camera pictures are smooth at pixel level."""
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    small.resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def reference(path: Path, image_size: int) -> torch.Tensor:
    pipeline = T.Compose(
        [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    with Image.open(path) as img:
        return pipeline(img.convert("RGB"))


@pytest.mark.parametrize(("size", "min_side"), [((500, 375), None), ((1600, 1200), None), ((1600, 1200), 128)])
def test_eval_pipeline_matches_the_reference(tmp_path: Path, size: tuple[int, int], min_side: int | None) -> None:
    path = photo(tmp_path / "p.jpg", size)
    dataset = ImageFilesDataset(tmp_path, ["p.jpg"], [0], eval_transform(64), min_side=min_side)
    batch = collate_skipping_bad([dataset[0]])
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (1, 3, 64, 64)
    model = TransferClassifier(num_classes=2, backbone="smallcnn", mean=MEAN, std=STD)
    ours = model.normalize(batch.images)[0]
    ref = reference(path, 64)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == torch.float32
    assert ours.min() >= ref.min() - 0.1 and ours.max() <= ref.max() + 0.1  # the same range
    # the same picture: tensor vs PIL resampling (and decoding at 1/4 or 1/8 size) move pixels by a few levels only
    assert (ours - ref).abs().mean() < 0.02  # a flipped picture is 1.1 away
    assert (ours - ref).abs().max() < 0.2


def test_train_pipeline_output_has_the_reference_shape_dtype_and_range(tmp_path: Path) -> None:
    photo(tmp_path / "p.jpg", (1600, 1200))
    for preset in ("standard", "seed002", "none"):
        dataset = ImageFilesDataset(tmp_path, ["p.jpg"], [0], train_transform(preset, 64), min_side=128)
        image, _, _ = dataset[(0, 3)]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64), preset
        x = TransferClassifier(num_classes=2, backbone="smallcnn", mean=MEAN, std=STD).normalize(image[None])
        assert x.dtype == torch.float32
        low = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)
        high = (torch.ones(3) - torch.tensor(MEAN)) / torch.tensor(STD)
        assert (x[0].amin(dim=(1, 2)) >= low - 1e-5).all() and (x[0].amax(dim=(1, 2)) <= high + 1e-5).all()
