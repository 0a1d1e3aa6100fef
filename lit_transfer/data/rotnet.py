"""RotNetDataModule: self-supervised rotation prediction on unlabeled images (RotNet, and RotNet-by-45°)."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lit_transfer.core.angles import angle_name, class_angles
from lit_transfer.data.base import (
    BadSample,
    BaseImageDataModule,
    EpochSampler,
    ImageFilesDataset,
    mix_seed,
)
from lit_transfer.data.checkpoint_classes import checkpoint_classes
from lit_transfer.data.images import find_images
from lit_transfer.data.rotation import BAND_INNER, BAND_OUTER, rotate_views, source_padding, source_size
from lit_transfer.data.splits import Sample, stratified_split
from lit_transfer.data.transforms import Transform, train_transform

AngleMode = Literal["discrete", "binned"]
Geometry = Literal["safe", "naive"]
SquareMode = Literal["crop", "resize"]
SOURCE_CLASS = "images"  # the single pseudo-class the split is stratified over


def rotation_class_names(num_rotations: int, angle_mode: AngleMode = "discrete") -> list[str]:
    """Class names ``0°, 45°, …``: each class's angle, in ``binned`` mode too (the centre of its bin).

    The names are the same in both modes (``angle_mode`` is accepted for symmetry): bins are centred on the
    multiples of the step, so class 0 is upright and the angle of class ``k`` is what undoes it.
    """
    step = 360 / num_rotations
    return [angle_name(k * step) for k in range(num_rotations)]


def angle_bin(angle: float, num_rotations: int) -> int:
    """The ``binned`` class of a counter-clockwise ``angle``: bin ``k`` covers ``[k·step - step/2, k·step + step/2)``.

    So 10° and 350° are class 0 (upright) and 30° class 1 with 45° steps.
    """
    step = 360 / num_rotations
    return int(((angle % 360) + step / 2) // step) % num_rotations


def predict_preprocessing(
    image_size: int,
    num_rotations: int = 8,
    angle_mode: AngleMode = "discrete",
    geometry: Geometry = "safe",
    square: SquareMode = "crop",
    decode_scale: float | None = 2.0,
    source_side: int | None = None,
) -> dict[str, Any]:
    """How :class:`RotNetDataModule` makes the ``predict`` view (the 0° view) of a photo, as plain values.

    The view is: the photo decoded (a large JPEG at a reduced size whose shorter side is at least
    ``decode_min_side``), made a ``source_size`` square (``square``: short side resized and the centre cropped, or
    squashed; antialiased bilinear), then, when ``low_pass`` is set, reflect-padded by ``low_pass["pad"]``,
    low-passed by the isotropic raised cosine (flat to ``inner``, zero from ``outer`` of the Nyquist frequency) and
    rounded; finally the central ``image_size`` square. The ``naive`` geometry and exact ``rot90`` rotations
    (4 discrete classes) use no low-pass and a source of ``image_size``. ``source_side`` overrides the source size.
    """
    right_angles_only = num_rotations == 4 and angle_mode == "discrete"
    side = int(source_side or source_size(image_size, geometry, right_angles_only))
    filtered = geometry == "safe" and side != image_size  # what rotation.safe_rotations does for a 0° view
    return {
        "geometry": geometry,
        "square": square,
        "num_rotations": int(num_rotations),
        "angle_mode": angle_mode,
        "image_size": int(image_size),
        "source_size": side,
        "low_pass": (
            {"inner": BAND_INNER, "outer": BAND_OUTER, "pad": source_padding(side), "padding": "reflect"}
            if filtered
            else None
        ),
        "decode_scale": decode_scale,
        "decode_min_side": None if decode_scale is None else math.ceil(decode_scale * side),
    }


def square_transform(size: int, square: SquareMode = "crop") -> Transform:
    """PIL image → ``uint8`` square of side ``size``: the centre square of the photo, or the whole photo squashed."""
    if square == "crop":
        return v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])


def matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether a relative POSIX path matches a glob pattern (its file name, or the whole path for ``a/b`` patterns).

    Case-insensitive, so ``*.png`` also takes ``IMG_0001.PNG``.
    """
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(path.lower() if "/" in p else name, p.lower()) for p in patterns)


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


UPRIGHT_MARKER = ".lit_transfer_upright"  # in a write_upright folder: its images were written by lit_transfer


def check_upright_folder(write_upright: str, predict_dir: str | None) -> None:
    """Refuse a ``write_upright`` folder that could overwrite or feed back the user's own images.

    It must not be ``predict_dir``, inside it (the copies would be read as input next time) or above it (a copy could
    land on an original), and an existing folder must be empty or one lit_transfer wrote before.
    """
    target = Path(write_upright).resolve()
    if predict_dir:
        source = Path(predict_dir).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(
                f"data.write_upright {write_upright!r} overlaps data.predict_dir {predict_dir!r} (the same folder, "
                "inside it or above it): the upright copies could overwrite originals or be read back as input. "
                "Give a folder outside predict_dir"
            )
    if target.is_dir() and any(target.iterdir()) and not (target / UPRIGHT_MARKER).is_file():
        raise ValueError(
            f"data.write_upright {write_upright!r} already holds files that lit_transfer did not write; give an "
            "empty or new folder, so none of them is overwritten"
        )


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
