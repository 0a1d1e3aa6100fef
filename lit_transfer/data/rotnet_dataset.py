"""The rotated views of a split's source images, one random view or every rotation of each image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from lit_transfer.core.batches import BadSample
from lit_transfer.core.seeding import mix_seed
from lit_transfer.data.dataset import ImageFilesDataset
from lit_transfer.data.rotation import rotate_views
from lit_transfer.data.rotnet_classes import AngleMode, angle_bin
from lit_transfer.data.rotnet_preprocessing import Geometry


class RotationDataset(Dataset):
    """Rotated views of the square source images of an :class:`ImageFilesDataset`.

    Items are ``(uint8 view, label, source index)`` (or the source's :class:`BadSample`), so base's collate, bad-image
    report and ``paths_of`` work unchanged. Items are addressed by a position or by ``(position, epoch)``.

    - ``random``: one view per image, its rotation drawn from ``(seed, epoch, index)``;
    - ``grouped``: every rotation of every image, at ``index * num_rotations + k``, for validation and testing, and
      for training with ``all_rotations`` (with :class:`RotationGroupSampler`);
    - ``upright``: the unrotated view with the source's own target (the file index), for prediction.

    Consecutive items of one image are made together from one decode and one band-limited source. Only training
    (``per_epoch``) lets the epoch change augmentation and binned angles; evaluation views never change.
    """

    def __init__(
        self,
        images: ImageFilesDataset,
        mode: Literal["random", "grouped", "upright"],
        num_rotations: int,
        angle_mode: AngleMode,
        geometry: Geometry,
        output_size: int,
        seed: int,
        per_epoch: bool = False,
    ) -> None:
        self.images = images
        self.mode = mode
        self.num_rotations = num_rotations
        self.angle_mode = angle_mode
        self.geometry = geometry
        self.output_size = output_size
        self.seed = seed
        self.per_epoch = per_epoch
        self.step = 360 / num_rotations
        self._cache: tuple[tuple[int, int], Any] | None = None

    @property
    def root(self) -> Path:
        """Folder the source paths are relative to."""
        return self.images.root

    @property
    def paths(self) -> list[str]:
        """Source image paths, indexed by the third element of every item."""
        return self.images.paths

    def __len__(self) -> int:
        return len(self.images) * (self.num_rotations if self.mode == "grouped" else 1)

    def angle(self, label: int, generator: torch.Generator | None) -> float:
        """The rotation of class ``label`` in [0°, 360°): exactly ``label * step``, or uniform within its bin."""
        if self.angle_mode == "discrete":
            return label * self.step
        return ((label + float(torch.rand((), generator=generator)) - 0.5) * self.step) % 360

    def draw(self, index: int, epoch: int) -> tuple[int, float]:
        """Label and angle of source ``index``'s single view in ``epoch``: a uniform class, or a uniform angle."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 2))
        if self.angle_mode == "binned":
            angle = float(torch.rand((), generator=generator)) * 360
            return angle_bin(angle, self.num_rotations), angle
        label = int(torch.randint(self.num_rotations, (), generator=generator))
        return label, self.angle(label, generator)

    def grouped_angles(self, index: int, epoch: int = 0) -> list[float]:
        """The angle of every class's view of source ``index`` (fixed for evaluation, where ``epoch`` is 0)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 3))
        return [self.angle(k, generator) for k in range(self.num_rotations)]

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        epoch = epoch if self.per_epoch else 0
        if self.mode != "grouped":
            source = self.images[(position, epoch)]
            if isinstance(source, BadSample):
                return source
            if self.mode == "upright":
                label, angle = source[1], 0.0  # for predict, the target is the file's index
            else:
                label, angle = self.draw(position, epoch)
            view = rotate_views(source[0], [angle], self.geometry, self.output_size)[0]
            return view, label, source[2]
        index, label = divmod(position, self.num_rotations)
        if self._cache is None or self._cache[0] != (index, epoch):
            source = self.images[(index, epoch)]
            views = source
            if not isinstance(source, BadSample):
                views = rotate_views(source[0], self.grouped_angles(index, epoch), self.geometry, self.output_size)
            self._cache = ((index, epoch), views)  # the image's other rotations are the next items
        views = self._cache[1]
        if isinstance(views, BadSample):
            return views
        return views[label], label, index
