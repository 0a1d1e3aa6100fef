"""Caltech101DataModule: the Caltech 101 categories, split per class by fractions (50/25/25 by default).

A download (``download: true``) goes into a temporary folder beside ``<root>/caltech101`` and is renamed into place
only when it is complete and checked, so a failed or interrupted download never leaves a folder that later runs
would take for the data.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_transfer.data.base import BaseImageDataModule
from lit_transfer.data.checkpoint_classes import checkpoint_classes
from lit_transfer.data.folder import scan_class_folders
from lit_transfer.data.images import class_dirs, is_hidden, is_image_file, list_class_dirs
from lit_transfer.data.splits import Sample, stratified_split

CATEGORIES_DIR = "101_ObjectCategories"
TORCHVISION_DIR = "caltech101"  # torchvision.datasets.Caltech101 extracts into <root>/caltech101/
DEFAULT_EXCLUDE: tuple[str, ...] = ("BACKGROUND_Google", "Faces_easy")
DEFAULT_FRACTIONS: tuple[float, ...] = (0.5, 0.25, 0.25)
# what torchvision's Caltech101.download fetches (read from its source when possible, see torchvision_urls)
ARCHIVE_URL = "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"

LAYOUTS = (
    f"<root>/{CATEGORIES_DIR}/<category>/image_NNNN.jpg (the extracted archive), "
    f"<root>/<category>/image_NNNN.jpg (root is {CATEGORIES_DIR} itself) or "
    f"<root>/{TORCHVISION_DIR}/{CATEGORIES_DIR}/<category>/image_NNNN.jpg (torchvision's download)"
)


def holds_images(folder: str | Path) -> bool:
    """Whether an image file lies anywhere below ``folder`` (hidden folders skipped; stops at the first one)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symbolic link loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        if any(is_image_file(name) for name in filenames):
            return True
    return False


def incomplete_download(root: str | Path) -> Path | None:
    """A ``caltech101`` or ``101_ObjectCategories`` folder at ``root`` that holds no image: a download cut short."""
    root = Path(root)
    candidates = [root / TORCHVISION_DIR, root / CATEGORIES_DIR]
    if root.name in (TORCHVISION_DIR, CATEGORIES_DIR):
        candidates.append(root)
    for folder in candidates:
        if folder.is_dir() and not holds_images(folder):
            return folder
    return None


def find_categories_dir(root: str | Path) -> Path | None:
    """The folder holding one sub-folder per category below ``root``, or ``None`` if there is none.

    ``root`` may be the extracted archive, ``101_ObjectCategories`` itself, torchvision's download folder, or any
    plain ``<root>/<class>/<image>`` tree. A layout folder without images (see :func:`incomplete_download`) is
    never taken for the data, nor for a class of a plain tree.
    """
    root = Path(root)
    for candidate in (root / CATEGORIES_DIR, root / TORCHVISION_DIR / CATEGORIES_DIR):
        if candidate.is_dir() and holds_images(candidate):
            return candidate
    if incomplete_download(root) is None and root.is_dir() and list_class_dirs(root):
        return root
    return None


def torchvision_urls() -> list[str]:
    """The URLs torchvision's ``Caltech101.download`` fetches, read from its source; ``[ARCHIVE_URL]`` if unreadable."""
    try:
        from torchvision.datasets.caltech import Caltech101

        urls = re.findall(r"https?://[^\s'\"]+", inspect.getsource(Caltech101.download))
    except Exception:
        urls = []
    return list(dict.fromkeys(urls)) or [ARCHIVE_URL]


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def check_download(categories: Path) -> str | None:
    """Why the freshly extracted ``categories`` folder is not a complete Caltech 101, or ``None`` when it is."""
    if not categories.is_dir():
        return f"torchvision finished but left no {TORCHVISION_DIR}/{CATEGORIES_DIR} folder"
    found = class_dirs(categories)
    if not found:
        return f"the extracted {CATEGORIES_DIR} folder holds no category folders"
    empty = [name for name, folder in found.items() if not holds_images(categories / folder)]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        return f"{len(empty)} of {len(found)} extracted category folders hold no images ({shown})"
    return None


def download_error(root: Path, reason: str, leftover: Path | None) -> str:
    """What a failed download means and how to get the data: the reason, the URLs, the target and three fixes."""
    target = root / TORCHVISION_DIR
    urls = " and ".join(torchvision_urls())
    kept = (
        f" {str(leftover)!r}, from an earlier incomplete download, was left as it is."
        if leftover is not None and leftover.exists()
        else ""
    )
    return (
        f"downloading Caltech101 failed: {reason}. torchvision's Caltech101 downloads {urls} (md5-checked) and "
        f"extracts it; the data would go to {str(target)!r}, and nothing was left there.{kept} To fix it: check the "
        "network connection (and proxy settings) and run again; or download the archive by hand, extract it and the "
        f"101_ObjectCategories.tar.gz inside it so that {str(target / CATEGORIES_DIR / '<category>')!r} folders "
        "hold the images; or point data.init_args.root at an existing copy of the data"
    )


def place_download(built: Path, target: Path) -> Path:
    """Rename the checked download ``built`` to ``target`` and return its categories folder.

    A complete copy that appeared at ``target`` meanwhile (another process downloading at the same time) is kept
    and ``built`` is left for the caller to discard; an incomplete one is moved aside, never deleted.
    """
    for _ in range(3):
        if (target / CATEGORIES_DIR).is_dir() and holds_images(target / CATEGORIES_DIR):
            return target / CATEGORIES_DIR
        if target.exists() and not target.is_dir():
            raise ValueError(f"{str(target)!r} is a file, not a folder: move it away so the download can go there")
        if target.exists():
            aside = target.with_name(f"{target.name}.incomplete-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(target, aside)
            except FileNotFoundError:
                continue  # moved by another process
            warnings.warn(
                f"moved {str(target)!r}, an earlier incomplete Caltech101 download, to {str(aside)!r}; delete it "
                "when you no longer need it",
                stacklevel=3,
            )
        try:
            os.rename(built, target)  # same file system: atomic
            return target / CATEGORIES_DIR
        except OSError:
            continue  # another process placed its copy first: checked again above
    raise ValueError(f"cannot move the downloaded Caltech101 into {str(target)!r}: it keeps changing")


def download_caltech101(root: str | Path) -> Path:
    """Download and extract Caltech 101 into ``<root>/caltech101/`` through torchvision; returns the categories folder.

    torchvision downloads (checking the archive's md5) into a fresh hidden folder beside the target, which is
    renamed into place once its categories are checked; on any failure that folder, and ``root`` if this call
    created it, are removed and a ``ValueError`` says why and what to do.
    """
    root = Path(root)
    leftover = incomplete_download(root)
    created = [p for p in (root, *root.parents) if not p.exists()]
    build = root / f".building-{TORCHVISION_DIR}-{uuid.uuid4().hex[:8]}"  # beside the target: the rename is atomic
    owned = placed = False
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            build.mkdir()  # fails if it exists: this call owns the folder it removes
            owned = True
        except OSError as err:
            raise ValueError(
                f"cannot download Caltech101 into {str(root)!r}: creating {str(build)!r} failed ({first_line(err)}); "
                "make the folder writable or point data.init_args.root at an existing copy of the data"
            ) from err
        try:
            from torchvision.datasets import Caltech101

            Caltech101(str(build), download=True)
        except ImportError as err:
            raise ImportError(
                f"downloading Caltech101 through torchvision failed: {err}. torchvision's Caltech101 class needs "
                "scipy (for its annotations): pip install scipy"
            ) from err
        except Exception as err:
            raise ValueError(download_error(root, first_line(err), leftover)) from err
        problem = check_download(build / TORCHVISION_DIR / CATEGORIES_DIR)
        if problem is not None:
            raise ValueError(download_error(root, problem, leftover))
        categories = place_download(build / TORCHVISION_DIR, root / TORCHVISION_DIR)
        placed = True
        return categories
    finally:
        if owned:
            shutil.rmtree(build, ignore_errors=True)
        if not placed:
            for folder in created:  # innermost first; only folders this call made, and only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break


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
            (torchvision's Caltech101 class; needs network access once). The download goes into a hidden folder
            beside the target and is renamed into place only when complete, so a failed one leaves nothing behind
            and says why; an incomplete ``caltech101/`` from an earlier run is moved aside, never deleted. On a
            multi-node cluster, download once before launching.
        exclude: category folders that never become classes (the clutter class ``BACKGROUND_Google`` and
            ``Faces_easy``, which holds the same photos as ``Faces`` cropped tighter).
        fractions: shares of each category for train, val and test; normalized by their sum.
        **kwargs: the loader, transform and bad-image settings of :class:`BaseImageDataModule` (``image_size``,
            ``batch_size``, ``num_workers``, …), with its defaults.
    """

    def __init__(
        self,
        root: str,
        download: bool = False,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _, self.val_fraction, self.test_fraction = check_fractions(fractions)
        self.root = root
        self.download = download
        self.exclude = list(exclude)
        self.fractions = [float(f) for f in fractions]
        known = checkpoint_classes()
        if known is not None:  # predict --ckpt_path: the data set is not read, and need not be there
            self.categories_dir = Path(root)
            self.class_names = known
            return
        categories_dir = find_categories_dir(root)
        if categories_dir is None and download:
            categories_dir = download_caltech101(root)
        if categories_dir is None:
            leftover = incomplete_download(root)
            if leftover is not None:
                raise FileNotFoundError(
                    f"{str(leftover)!r} looks like an incomplete Caltech101 download: it holds no image files. Delete "
                    "it, or run again with --data.init_args.download true (which downloads afresh and moves this "
                    f"folder aside, never deleting it); expected {LAYOUTS}"
                )
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
