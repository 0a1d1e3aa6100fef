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


class FeatureSteps(NamedTuple):
    """Consecutive training batches of cached features, trained as one Lightning step (``fused_steps``).

    ``features``, ``targets`` and ``indices`` hold the rows of every batch in order; ``sizes`` is each batch's row
    count, so :meth:`batches` gives back exactly the batches the unfused loader would have served.
    """

    features: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    bad: list[Any]
    sizes: list[int]

    def batches(self) -> list[FeatureBatch]:
        """The training batches, each as the unfused loader serves it (unreadable files only in the first)."""
        out, start = [], 0
        for i, size in enumerate(self.sizes):
            rows = slice(start, start + size)
            bad = self.bad if i == 0 else []
            out.append(FeatureBatch(self.features[rows], self.targets[rows], self.indices[rows], bad))
            start += size
        return out
