"""A dataset of image files: decoded, transformed with per-item seeded randomness, bad files named."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from lit_transfer.core.batches import BadSample
from lit_transfer.core.seeding import mix_seed
from lit_transfer.data.images import BadImageError, load_rgb
from lit_transfer.data.transforms import Transform

BadImagePolicy = Literal["skip", "error"]


class ImageFilesDataset(Dataset):
    """Images from a list of files; items are ``(uint8 CHW tensor, target, index)`` or a :class:`BadSample`.

    ``targets`` are class labels for training and evaluation, or the item's own index for prediction. Items are
    addressed by an index or by ``(index, epoch)`` (from :class:`EpochSampler`); random transforms then draw from a
    generator seeded by ``(seed, epoch, index)``. ``min_side`` lets large JPEGs decode at a reduced size whose
    shorter side is still at least that many pixels (see :func:`~lit_transfer.data.images.load_rgb`).
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: Transform,
        split: str = "train",
        bad_images: BadImagePolicy = "skip",
        seed: int = 0,
        min_side: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.split = split
        self.bad_images = bad_images
        self.seed = seed
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Any:
        """The decoded RGB image of item ``index``, or a :class:`BadSample` under the skip policy."""
        path = self.root / self.paths[index]
        try:
            return load_rgb(path, self.min_side)
        except Exception as err:  # a worker must not die on one file: name it and go on, or stop with its name
            if self.bad_images == "error":
                raise BadImageError(
                    f"cannot read image {str(path)!r} ({self.split} split): {err}. Fix or remove the file, or set "
                    "data.init_args.bad_images: skip"
                ) from err
            return BadSample(str(path), self.split, f"{type(err).__name__}: {err}")

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image = self.load(index)
        if isinstance(image, BadSample):
            return image
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator (~180 µs a call, measured)
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            tensor = self.transform(image)
        return tensor, self.targets[index], index
