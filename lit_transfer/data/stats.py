"""Exact per-channel mean and std of a data set's images: the statistics ``normalize`` uses in training.

Pixels are summed exactly (integer sums of ``x`` and ``x²`` for ``uint8`` images); the data card
(``python -m lit_transfer stats``, :mod:`lit_transfer.commands.datacard`) reports the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class ChannelStats:
    """Exact per-channel mean and std of images streamed one at a time.

    ``uint8`` images are summed as integers (``x`` and ``x²``), so the result is exact whatever the number of
    pixels, and reported on the [0, 1] scale the model normalizes on; float images are summed in float64 as given.
    The std is the population std over all pixels, not an average of per-image stds.
    """

    def __init__(self) -> None:
        self.sums: list[Any] = []
        self.squares: list[Any] = []
        self.count = 0
        self.integer: bool | None = None

    def update(self, image: torch.Tensor) -> None:
        """Add one ``(C, H, W)`` image."""
        sums = _sums_of(image)
        assert sums is not None
        self.add(*sums)

    def add(self, sums: Sequence[Any], squares: Sequence[Any], count: int, integer: bool) -> None:
        """Add precomputed per-channel sums of ``x`` and ``x²`` over ``count`` pixels per channel."""
        if self.integer is None:
            self.integer = integer
            self.sums, self.squares = [0] * len(sums), [0] * len(sums)
        if integer != self.integer or len(sums) != len(self.sums):
            raise ValueError("all images must have the same number of channels and the same kind of dtype")
        self.sums = [a + b for a, b in zip(self.sums, sums, strict=True)]
        self.squares = [a + b for a, b in zip(self.squares, squares, strict=True)]
        self.count += count

    def result(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on the [0, 1] scale (``uint8`` images) or the images' own scale (float)."""
        if not self.count:
            raise ValueError("no pixels: the channel statistics of an empty set of images are undefined")
        n, scale = self.count, 255.0 if self.integer else 1.0
        mean = [s / n / scale for s in self.sums]
        # n·Σx² − (Σx)² is exact in Python integers; only the final division rounds.
        var = [max(0.0, (n * q - s * s) / (n * n)) for s, q in zip(self.sums, self.squares, strict=True)]
        return mean, [math.sqrt(v) / scale for v in var]


def _image_of(item: Any) -> torch.Tensor | None:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    return None  # not an image, e.g. the BadSample a dataset returns for a file it could not decode


def compute_channel_stats(dataset: Dataset, num_workers: int = 0) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std over every pixel of ``dataset``'s images.

    Items are tuples whose first element is a ``(C, H, W)`` image (``(image, target, ...)``) or bare images; other
    items (a ``BadSample`` for an unreadable file) are skipped. ``uint8`` images give statistics on the [0, 1]
    scale. Use a dataset with the evaluation transform (fixed size, no augmentation) so that every pixel the model
    will be normalized for counts once.

    Args:
        dataset: map-style dataset of images.
        num_workers: loader processes decoding the images.
    """
    stats = ChannelStats()
    # the workers send back per-channel sums, plain integers: no image crosses /dev/shm, where a full one would
    # fail unseen in the queue's background thread and leave this loop waiting forever
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_sums_of)
    for sums in loader:
        if sums is not None:
            stats.add(*sums)
    return stats.result()


def _sums_of(item: Any) -> tuple[list[Any], list[Any], int, bool] | None:
    """The per-channel sums of ``x`` and ``x²`` of an item's image, its pixel count and integer-ness, or None."""
    image = _image_of(item)
    if image is None:
        return None
    integer = not image.is_floating_point()
    x = image.to(torch.int64 if integer else torch.float64).flatten(1)
    return x.sum(dim=1).tolist(), (x * x).sum(dim=1).tolist(), x.shape[1], integer
