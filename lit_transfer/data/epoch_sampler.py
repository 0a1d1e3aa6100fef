"""The sampler every data module's loaders use: a reproducible order of ``(index, epoch)`` keys, shardable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from lit_transfer.core.seeding import mix_seed


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: the order is a permutation seeded by ``(seed, epoch)``, not by the global RNG.

    Passing the epoch with each index lets every sample seed its own augmentation from ``(seed, epoch, index)``, so
    an epoch draws the same images and the same augmentations whichever worker loads them and whether the run was
    resumed or not. Under distributed training every rank takes its share of the same order: training shards are
    padded to equal length (each rank must run the same number of steps), evaluation shards are not, so no image is
    counted twice in a metric.
    """

    def __init__(
        self, size: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0, pad: bool = True
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start, and by the data module when it builds a loader."""
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.num_replicas > 1 and self.pad and order:
            order += (order * self.num_replicas)[: (-len(order)) % self.num_replicas]
        return order[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.size
        if self.pad:
            return -(-self.size // self.num_replicas)
        return len(range(self.rank, self.size, self.num_replicas))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._order()])
