"""RotNetDataModule: self-supervised rotation prediction on unlabeled images (RotNet, and RotNet-by-45°).

Its parts live in their own modules: the classes (:mod:`~lit_transfer.data.rotnet_classes`), the source and
``predict`` preprocessing (:mod:`~lit_transfer.data.rotnet_preprocessing`), the rotated views
(:mod:`~lit_transfer.data.rotnet_dataset`), the ``all_rotations`` order (:mod:`~lit_transfer.data.rotnet_sampler`)
and the ``write_upright`` folder (:mod:`~lit_transfer.data.upright_folder`). Their names stay importable from here.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_transfer.core.angles import class_angles
from lit_transfer.data.base import BaseImageDataModule
from lit_transfer.data.checkpoint_classes import checkpoint_classes
from lit_transfer.data.dataset import ImageFilesDataset
from lit_transfer.data.images import find_images
from lit_transfer.data.rotation import source_size
from lit_transfer.data.rotnet_classes import AngleMode, rotation_class_names
from lit_transfer.data.rotnet_classes import angle_bin as angle_bin  # re-exported
from lit_transfer.data.rotnet_dataset import RotationDataset
from lit_transfer.data.rotnet_preprocessing import Geometry, SquareMode, predict_preprocessing, square_transform
from lit_transfer.data.rotnet_sampler import RotationGroupSampler
from lit_transfer.data.splits import Sample, stratified_split
from lit_transfer.data.transforms import Transform, train_transform
from lit_transfer.data.upright_folder import UPRIGHT_MARKER as UPRIGHT_MARKER  # re-exported
from lit_transfer.data.upright_folder import check_upright_folder

SOURCE_CLASS = "images"  # the single pseudo-class the split is stratified over


def matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether a relative POSIX path matches a glob pattern (its file name, or the whole path for ``a/b`` patterns).

    Case-insensitive, so ``*.png`` also takes ``IMG_0001.PNG``.
    """
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(path.lower() if "/" in p else name, p.lower()) for p in patterns)


class RotNetDataModule(BaseImageDataModule):
    """Unlabeled images → rotated views labelled with their rotation: the RotNet pretext task.

    Every image below ``root`` (class folders, if any, are ignored) is one source; the sources are split into
    train/val/test by the fractions (seeded, by source image, so no image's rotations cross splits). Label ``k``
    means the view was rotated counter-clockwise by ``k * 360 / num_rotations`` degrees (to within half a step in
    ``binned`` mode).

    Args:
        root: folder, or list of folders, searched recursively for images.
        patterns: glob patterns an image's file name must match (``["*.png"]`` as in seed 000; a pattern with
            ``/`` is matched against the path below its root); default: every common image extension.
        num_rotations: 8 (45° steps, "RotNet-by-45°") or 4 (90° steps, Gidaris et al. 2018).
        angle_mode: ``discrete`` (exactly ``k`` steps) or ``binned`` (a uniform angle, label = its bin; bin ``k``
            is centred on ``k`` steps, so the class names and angles are the same as in ``discrete`` mode).
        geometry: ``safe`` (exact band-limited rotation, central crop: nothing but the content tells the angle) or
            ``naive`` (seed 000: bilinear rotation of the whole image, black corners; leaks the angle).
        all_rotations: train on every rotation of each image in the same batch (the paper's recipe; ``batch_size``
            should be a multiple of ``num_rotations``) instead of one random rotation per image and epoch.
        square: make non-square photos square by ``crop`` (the centre square) or ``resize`` (squash).
        val_fraction: share of the images held out for validation (every image in every rotation).
        test_fraction: share of the images held out for testing.
        augmentation: train transform preset applied to the square source before rotating (``none``, ``standard``).
        write_upright: on ``predict`` with a RotNetClassifier, also write every ``predict_dir`` image turned upright
            by its predicted angle into this folder (same relative path and format; whole image, expanded canvas).
        sampler: only ``random``: every rotation class is already drawn equally often (``balanced`` is for labelled
            data).
        **kwargs: the loader, transform and bad-image settings of :class:`BaseImageDataModule`, with its defaults.
            They apply to the views: ``image_size`` is the side of the views fed to the model, ``batch_size``
            counts views, ``seed`` also seeds the image order and the rotations, ``normalize: dataset`` measures
            the training split's views, and ``decode_scale`` multiplies the square source's side.
    """

    def __init__(
        self,
        root: str | list[str],
        patterns: list[str] | None = None,
        num_rotations: Literal[4, 8] = 8,
        angle_mode: AngleMode = "discrete",
        geometry: Geometry = "safe",
        all_rotations: bool = False,
        square: SquareMode = "crop",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        augmentation: str = "none",
        write_upright: str | None = None,
        sampler: Literal["random"] = "random",
        **kwargs: Any,
    ) -> None:
        super().__init__(augmentation=augmentation, sampler=sampler, **kwargs)
        if sampler != "random":
            raise ValueError(f"data.sampler={sampler!r}: RotNet draws every rotation class equally often; use 'random'")
        if self.tta != "none":
            raise ValueError(
                f"data.init_args.tta={self.tta}: RotNet's labels are its views' rotations, which TTA would corrupt (a "
                "mirrored rotation by k steps is a rotation by -k; corner crops reach past the part of the source that "
                "is valid at every angle, and the naive geometry's black corners give the angle away); use tta: none"
            )
        if num_rotations not in (4, 8):
            raise ValueError(f"data.num_rotations={num_rotations}: use 8 (45° steps) or 4 (90° steps)")
        if angle_mode not in ("discrete", "binned"):
            raise ValueError(f"data.angle_mode={angle_mode!r}: use 'discrete' or 'binned'")
        if geometry not in ("safe", "naive"):
            raise ValueError(f"data.geometry={geometry!r}: use 'safe' or 'naive'")
        if square not in ("crop", "resize"):
            raise ValueError(f"data.square={square!r}: use 'crop' or 'resize'")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) and "
                "sum to less than 1"
            )
        self.roots = [root] if isinstance(root, str) else list(root)
        if not self.roots:
            raise ValueError("data.root is an empty list: give at least one folder of images")
        for folder in self.roots if checkpoint_classes() is None else ():  # predict --ckpt_path reads no root
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"image folder {folder!r} does not exist or is not a directory")
        if write_upright:
            check_upright_folder(write_upright, self.predict_dir)
        if all_rotations and self.batch_size % num_rotations:
            rank_zero_warn(
                f"data.batch_size={self.batch_size} is not a multiple of data.num_rotations={num_rotations}: with "
                "all_rotations, some images' rotations will be split across batches"
            )
        self.root = root
        self.write_upright = write_upright
        self.patterns = list(patterns) if patterns else None
        self.num_rotations = num_rotations
        self.angle_mode = angle_mode
        self.geometry = geometry
        self.all_rotations = all_rotations
        self.square = square
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.class_names = rotation_class_names(num_rotations, angle_mode)
        right_angles_only = num_rotations == 4 and angle_mode == "discrete"
        self.source_size = source_size(self.image_size, geometry, right_angles_only)

    @property
    def angles(self) -> list[float]:
        """Each class's angle in degrees (a bin's centre in ``binned`` mode)."""
        return class_angles(self.class_names)

    def train_targets(self) -> list[int]:
        """The class of every training view, for inverse-frequency class weights: each rotation once per image.

        Exact with ``all_rotations`` (every image is shown in every rotation each epoch); with one random view per
        image the class is uniform by construction (a uniform class, or a uniform angle in bins of equal width), so
        these are its exact expected frequencies. The source images' own labels (all 0) are not what is trained on.
        """
        images = sum(1 for s in self.samples if s.split == "train")
        return [k for _ in range(images) for k in range(self.num_rotations)]

    def predict_preprocessing(self) -> dict[str, Any]:
        """How this module makes the ``predict`` view, as plain values (see :func:`predict_preprocessing`).

        RotNetClassifier stores it in its checkpoints, so an export can record (and the inference helper
        reproduce) the very input the model saw.
        """
        return predict_preprocessing(
            self.image_size,
            self.num_rotations,
            self.angle_mode,
            self.geometry,
            self.square,
            self.decode_scale,
            self.source_size,
        )

    def find_sources(self) -> tuple[Path, list[str]]:
        """Every image below the roots that matches the patterns, relative to the roots' common folder."""
        roots = [Path(r).resolve() for r in self.roots]
        base = Path(os.path.commonpath([str(r) for r in roots]))
        found: dict[str, None] = {}
        for root in roots:
            files = find_images(root, ("",)) if self.patterns else find_images(root)
            for rel in files:
                if self.patterns is None or matches(rel, self.patterns):
                    found[(root / rel).relative_to(base).as_posix()] = None
        if not found:
            wanted = f"matching {self.patterns}" if self.patterns else "with an image extension"
            raise ValueError(f"no image files {wanted} below data.root {self.root!r}")
        return base, sorted(found)

    def build_samples(self) -> tuple[Path, list[Sample]]:
        """Split the source images (one pseudo-class, so the split is by image) into train/val/test."""
        base, files = self.find_sources()
        samples = stratified_split(
            {SOURCE_CLASS: files}, [SOURCE_CLASS], self.val_fraction, self.test_fraction, self.seed
        )
        return base, [Sample(s.path, 0, s.split) for s in samples]

    def source_transform(self, split: str) -> Transform:
        """PIL image → square ``uint8`` source at :attr:`source_size`: augmented for ``train`` unless ``none``."""
        if split == "train" and self.augmentation != "none":
            return train_transform(self.augmentation, self.source_size)
        return square_transform(self.source_size, self.square)

    def make_dataset(self, root: str | Path, paths: Sequence[str], targets: Sequence[int], split: str) -> Dataset:
        """Source images of one split, wrapped in their rotated views."""
        images = ImageFilesDataset(
            root,
            paths,
            targets,
            self.source_transform(split),
            split,
            self.bad_images,
            self.seed,
            self.decode_min_side(self.source_size),
        )
        if split == "predict":
            mode = "upright"
        elif split == "train" and not self.all_rotations:
            mode = "random"
        else:
            mode = "grouped"
        return RotationDataset(
            images,
            mode,  # type: ignore[arg-type]
            self.num_rotations,
            self.angle_mode,
            self.geometry,
            self.image_size,
            self.seed,
            per_epoch=split == "train",
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training views; with ``all_rotations`` shuffled images, each with all its rotations in a row."""
        dataset = self._datasets.get("train")
        if not self.all_rotations or dataset is None or len(dataset) == 0:
            return self._loader("train", shuffle=True)  # (an empty split is reported there)
        world, rank = self._world()
        images = len(dataset) // self.num_rotations
        return self._loader("train", True, RotationGroupSampler(images, self.num_rotations, self.seed, world, rank))
