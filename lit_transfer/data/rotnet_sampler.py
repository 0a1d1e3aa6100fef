"""The RotNet training order that keeps every rotation of an image together (``all_rotations``)."""

from __future__ import annotations

from collections.abc import Iterator

from lit_transfer.data.epoch_sampler import EpochSampler


class RotationGroupSampler(EpochSampler):
    """:class:`EpochSampler` over images that yields all rotations of each image in a row.

    Images come in an order seeded by ``(seed, epoch)`` and are sharded whole across ranks, so with a batch size that
    is a multiple of ``num_rotations`` every batch holds all rotations of its images (the paper's recipe).
    """

    def __init__(self, num_images: int, num_rotations: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(num_images, True, seed, num_replicas, rank, pad=True)
        self.num_rotations = num_rotations

    def __len__(self) -> int:
        return super().__len__() * self.num_rotations

    def __iter__(self) -> Iterator[tuple[int, int]]:
        r = self.num_rotations
        return iter([(image * r + k, self.epoch) for image in self._order() for k in range(r)])
