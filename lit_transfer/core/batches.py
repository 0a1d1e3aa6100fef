"""The batch types data modules produce and models, callbacks and the feature cache consume."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class BadSample(NamedTuple):
    """What a dataset returns instead of an image it could not decode (under ``bad_images: skip``)."""

    path: str
    split: str
    reason: str


class Batch(NamedTuple):
    """A collated batch: images, targets (labels, or file indices for predict), dataset indices, skipped files."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    bad: list[BadSample]


class FeatureBatch(NamedTuple):
    """A batch of cached backbone features: the model feeds ``features`` straight to its head."""

    features: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    bad: list[Any]


def keep_batch(batch: FeatureBatch) -> FeatureBatch:
    """Collate function of feature loaders: the feature dataset's ``__getitems__`` already built the batch."""
    return batch
