"""Caltech101DataModule: the Caltech 101 categories, split per class by fractions (50/25/25 by default)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lit_transfer.data.base import BadImagePolicy, BaseImageDataModule
from lit_transfer.data.folder import scan_class_folders
from lit_transfer.data.images import list_class_dirs
from lit_transfer.data.splits import Sample, stratified_split

CATEGORIES_DIR = "101_ObjectCategories"
TORCHVISION_DIR = "caltech101"  # torchvision.datasets.Caltech101 extracts into <root>/caltech101/
DEFAULT_EXCLUDE: tuple[str, ...] = ("BACKGROUND_Google", "Faces_easy")
DEFAULT_FRACTIONS: tuple[float, ...] = (0.5, 0.25, 0.25)

LAYOUTS = (
    f"<root>/{CATEGORIES_DIR}/<category>/image_NNNN.jpg (the extracted archive), "
    f"<root>/<category>/image_NNNN.jpg (root is {CATEGORIES_DIR} itself) or "
    f"<root>/{TORCHVISION_DIR}/{CATEGORIES_DIR}/<category>/image_NNNN.jpg (torchvision's download)"
)


def find_categories_dir(root: str | Path) -> Path | None:
    """The folder holding one sub-folder per category below ``root``, or ``None`` if there is none.

    ``root`` may be the extracted archive, ``101_ObjectCategories`` itself, torchvision's download folder, or any
    plain ``<root>/<class>/<image>`` tree.
    """
    root = Path(root)
    for candidate in (root / CATEGORIES_DIR, root / TORCHVISION_DIR / CATEGORIES_DIR):
        if candidate.is_dir():
            return candidate
    if root.is_dir() and list_class_dirs(root):
        return root
    return None


def download_caltech101(root: str | Path) -> None:
    """Download and extract Caltech 101 into ``<root>/caltech101/`` through torchvision (nothing is read)."""
    try:
        from torchvision.datasets import Caltech101

        Caltech101(str(root), download=True)
    except ImportError as err:
        raise ImportError(
            f"downloading Caltech101 through torchvision failed: {err}. torchvision's Caltech101 class needs scipy "
            "(for its annotations): pip install scipy"
        ) from err


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions and return them normalized to sum to one."""
    values = [float(f) for f in fractions]
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or sum(values) <= 0:
        raise ValueError(
            f"data.fractions={list(fractions)} must be three non-negative numbers (train, val, test) with a "
            "positive sum, e.g. [0.5, 0.25, 0.25]"
        )
    if values[0] == 0:
        raise ValueError(f"data.fractions={list(fractions)} leaves nothing to train on: the first one must be positive")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


class Caltech101DataModule(BaseImageDataModule):
    """Caltech 101 (``101_ObjectCategories/<category>/image_NNNN.jpg``), split per category by ``fractions``.

    The images are read straight from the category folders; torchvision is used only to download and extract
    the archive when ``download`` is set and no categories are found. Splits are stratified per category, seeded,
    and depend only on the files' relative paths. Grayscale images become RGB when they are loaded, and files
    without an image extension are ignored.

    Args:
        root: the extracted archive (holding ``101_ObjectCategories``), ``101_ObjectCategories`` itself,
            torchvision's download folder (holding ``caltech101/101_ObjectCategories``) or any
            ``<root>/<class>/<image>`` tree.
        download: download and extract the archive into ``<root>/caltech101/`` when no categories are found
            (torchvision's Caltech101 class; needs network access once). On a multi-node cluster, download once
            before launching.
        exclude: category folders that never become classes (the clutter class ``BACKGROUND_Google`` and
            ``Faces_easy``, which holds the same photos as ``Faces`` cropped tighter).
        fractions: shares of each category for train, val and test; normalized by their sum.
        image_size: side of the square crops fed to the model.
        batch_size: images per batch (per device).
        num_workers: loader processes; ``None`` uses every core this process may use, shared among the training
            processes of a node.
        augmentation: train transform preset (``standard``, ``seed002``, ``none``).
        pin_memory: page-locked batches; ``None`` pins when a GPU is used.
        persistent_workers: keep loader processes alive between epochs.
        predict_dir: folder of images for ``predict`` (searched recursively).
        seed: seed of the split assignment, the shuffling and the augmentation.
        bad_images: ``skip`` unreadable images and list them in ``bad_images.csv``, or stop with an ``error``.
        max_bad_fraction: stop before training when more than this share of the images is unreadable.
        check_images: read every file's header at setup, so most bad files are known before training starts.
        loader_timeout: seconds to wait for a batch from a worker before failing (0 waits forever).
        sampler: ``random`` (shuffled) or ``balanced`` (every class drawn equally often, with replacement).
        normalize: ``model`` (the backbone weights' mean/std) or ``dataset`` (exact mean/std of the training split,
            stored in the checkpoint).
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int | None = None,
        augmentation: str = "standard",
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        predict_dir: str | None = None,
        seed: int = 42,
        bad_images: BadImagePolicy = "skip",
        max_bad_fraction: float = 0.05,
        check_images: bool = True,
        loader_timeout: float = 0.0,
        sampler: Literal["random", "balanced"] = "random",
        normalize: Literal["model", "dataset"] = "model",
        decode_scale: float | None = 2.0,
    ) -> None:
        super().__init__(
            image_size, batch_size, num_workers, augmentation, pin_memory, persistent_workers, predict_dir, seed,
            bad_images, max_bad_fraction, check_images, loader_timeout, sampler, normalize, decode_scale,
        )  # fmt: skip
        _, self.val_fraction, self.test_fraction = check_fractions(fractions)
        self.root = root
        self.download = download
        self.exclude = list(exclude)
        self.fractions = [float(f) for f in fractions]
        categories_dir = find_categories_dir(root)
        if categories_dir is None and download:
            download_caltech101(root)
            categories_dir = find_categories_dir(root)
        if categories_dir is None:
            hint = "" if download else "; pass --data.init_args.download true to download it"
            raise FileNotFoundError(f"no Caltech101 categories found in {root!r}: expected {LAYOUTS}{hint}")
        self.categories_dir = categories_dir
        excluded = set(self.exclude)
        self.class_names = [name for name in list_class_dirs(categories_dir) if name not in excluded]
        if not self.class_names:
            raise ValueError(
                f"no categories left in {str(categories_dir)!r} after excluding {self.exclude}: expected {LAYOUTS}"
            )

    def build_samples(self) -> tuple[Path, list[Sample]]:
        """Scan the category folders and assign every image to a split."""
        samples = stratified_split(
            scan_class_folders(self.categories_dir, self.class_names),
            self.class_names,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )
        return self.categories_dir, samples
