"""Class balance for imbalanced training sets: a class-balanced sampler.

The inverse-frequency loss weights live in :mod:`lit_transfer.core.class_weights` (the model computes them; it does
not import the data package) and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from lit_transfer.core.class_weights import Labels, as_label_array
from lit_transfer.core.class_weights import inverse_frequency_weights as inverse_frequency_weights  # re-exported


class BalancedSampler(Sampler[Any]):
    """Draws every class equally often each epoch, with replacement within a class; shardable across ranks.

    Each epoch draws ``num_samples`` indices: the classes present in ``labels`` get equal shares (the remainder
    goes to randomly chosen classes, one extra each), each share is drawn with replacement from its class, and the
    whole draw is shuffled. The draw depends only on ``(seed, epoch)``, so every rank computes the same global draw
    and keeps ``draw[rank::num_replicas]`` after padding it (by repeating its start) to a multiple of
    ``num_replicas``: the shards are disjoint slices whose union is the global draw.

    Under Lightning leave ``num_replicas=1``: with ``use_distributed_sampler`` (the default) Lightning wraps the
    sampler in a ``DistributedSamplerWrapper``, which shards the same global draw and forwards ``set_epoch``. Pass
    ``num_replicas`` and ``rank`` only where you shard yourself (plain PyTorch, or ``use_distributed_sampler=False``).

    Args:
        labels: the class index of every training item, in dataset order.
        num_samples: indices drawn per epoch over all ranks; ``None`` draws ``len(labels)``.
        seed: seed of the draw, combined with the epoch.
        num_replicas: number of ranks sharing the draw.
        rank: this rank's index in ``[0, num_replicas)``.
        item_keys: yield ``(index, key)`` pairs instead of bare indices, ``key`` unique to each (epoch, draw), for
            datasets addressed by ``(index, epoch)`` that seed an item's augmentation from it (``ImageFilesDataset``):
            each draw of an oversampled image then gets its own augmentation instead of a copy of the same one.
    """

    def __init__(
        self,
        labels: Labels,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        item_keys: bool = False,
    ) -> None:
        self.labels = as_label_array(labels)
        if self.labels.size == 0:
            raise ValueError("BalancedSampler needs at least one label")
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be at least 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas}) with num_replicas >= 1")
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.item_keys = item_keys
        self.epoch = 0
        classes = np.unique(self.labels)
        self.members: list[np.ndarray] = [np.flatnonzero(self.labels == c) for c in classes]
        self.samples_per_replica = math.ceil(self.num_samples / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose draw the next iteration yields."""
        self.epoch = epoch

    def global_draw(self) -> np.ndarray:
        """The indices of this epoch over all ranks, before padding and sharding."""
        # SeedSequence mixes (seed, epoch) into independent streams; negative seeds are mapped onto unsigned ones.
        rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64])
        n_classes = len(self.members)
        per_class = np.full(n_classes, self.num_samples // n_classes, dtype=np.int64)
        per_class[rng.permutation(n_classes)[: self.num_samples % n_classes]] += 1
        draw = np.concatenate(
            [m[rng.integers(0, len(m), size=k)] for m, k in zip(self.members, per_class, strict=True)]
        )
        return draw[rng.permutation(len(draw))]

    def __iter__(self) -> Iterator[Any]:
        draw = self.global_draw()
        total = self.samples_per_replica * self.num_replicas
        if total > len(draw):
            draw = np.concatenate([draw, np.resize(draw, total - len(draw))])
        mine = draw[self.rank :: self.num_replicas].tolist()
        if not self.item_keys:
            return iter(mine)
        keys = range(self.epoch * total + self.rank, (self.epoch + 1) * total, self.num_replicas)
        return iter(list(zip(mine, keys, strict=True)))

    def __len__(self) -> int:
        return self.samples_per_replica
