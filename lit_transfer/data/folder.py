"""ImageFolderDataModule: class-per-folder images, from one root split by fractions or from split folders."""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from lit_transfer.data.base import BaseImageDataModule
from lit_transfer.data.checkpoint_classes import checkpoint_classes
from lit_transfer.data.images import (
    class_dirs,
    find_images,
    list_class_dirs,
    report_unreadable,
    walk_images,
    warn_links,
)
from lit_transfer.data.splits import Sample, stratified_split


def scan_class_folders(folder: Path, class_names: list[str]) -> dict[str, list[str]]:
    """Image files per class below ``folder``, relative to ``folder``; an empty class folder is an error.

    Each real file belongs to one class only: a file that links make reachable from several class folders stays in
    the class whose folder really holds it (else the first such class), and one warning names an example.
    """
    dirs = class_dirs(folder)
    owners: dict[str, tuple[tuple[bool, bool, int], str, str]] = {}  # real path -> (preference, class, path)
    shared, example = 0, ("", "")
    for order, name in enumerate(class_names):
        class_folder = folder / dirs[name]
        walk = walk_images(class_folder)
        warn_links(class_folder, walk)
        if walk.unreadable and walk.unreadable[0][0] == str(class_folder):
            raise ValueError(
                f"class folder {str(class_folder)!r} cannot be read ({walk.unreadable[0][1]}): give the user running "
                f"lit_transfer read access (chmod -R u+rX {shlex.quote(str(class_folder))}), or move the folder out "
                "of the data root"
            )
        report_unreadable(walk.unreadable)
        if not walk.images:
            raise ValueError(
                f"class folder {str(class_folder)!r} holds no image files; add images or remove the folder"
            )
        inside = os.path.realpath(class_folder) + os.sep
        for image in walk.images:
            rank = (not image.real.startswith(inside), image.via_link, order)
            path = f"{dirs[name]}/{image.rel}"
            if image.real not in owners:
                owners[image.real] = (rank, name, path)
                continue
            shared += 1
            if rank < owners[image.real][0]:
                example = (owners[image.real][2], path)
                owners[image.real] = (rank, name, path)
            else:
                example = (path, owners[image.real][2])
    if shared:
        warnings.warn(
            f"{shared} image(s) below {str(folder)!r} are reachable from more than one class folder through symbolic "
            f"links; each is used once, in the class folder that holds it (e.g. {example[0]!r} is {example[1]!r})",
            stacklevel=2,
        )
    files: dict[str, list[str]] = {name: [] for name in class_names}
    for _, name, path in owners.values():
        files[name].append(path)
    for name in class_names:
        files[name].sort()
        if not files[name]:
            raise ValueError(
                f"class folder {str(folder / dirs[name])!r} holds only links to images of other classes; add images "
                "or remove the folder"
            )
    return files


class ImageFolderDataModule(BaseImageDataModule):
    """Images in ``<folder>/<class>/**/<image>`` layout.

    Give either ``root`` (one folder split into train/val/test by ``val_fraction``/``test_fraction``, stratified
    per class and seeded), or ``train_dir`` with optional ``val_dir``/``test_dir``; a missing val or test folder is
    carved out of ``train_dir`` by its fraction. Class indices follow the sorted class folder names of the training
    folder, the same for every split.

    Args:
        root: one folder holding every image, split by the fractions.
        train_dir: folder of training images.
        val_dir: folder of validation images.
        test_dir: folder of test images.
        val_fraction: share of each class held out for validation when there is no ``val_dir``.
        test_fraction: share of each class held out for testing when there is no ``test_dir``.
        **kwargs: the loader, transform and bad-image settings of :class:`BaseImageDataModule` (``image_size``,
            ``batch_size``, ``num_workers``, …), with its defaults.
    """

    def __init__(
        self,
        root: str | None = None,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (root is None) == (train_dir is None):
            raise ValueError("give exactly one of data.root (split by fractions) or data.train_dir (split folders)")
        if root is not None and (val_dir or test_dir):
            raise ValueError("data.val_dir and data.test_dir go with data.train_dir, not with data.root")
        self.root = root
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.test_dir = test_dir
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        known = checkpoint_classes()
        if known is not None:  # predict --ckpt_path: the training folder is not read, and need not exist
            self.class_names = known
            return
        self.class_names = list_class_dirs(root or train_dir)  # type: ignore[arg-type]
        if not self.class_names:
            raise ValueError(f"no class folders in {root or train_dir!r}: expected <folder>/<class name>/<image>")
        if len(self.class_names) < 2:
            key = "root" if root is not None else "train_dir"
            raise ValueError(
                f"data.{key} {root or train_dir!r} has one class folder ({self.class_names[0]!r}): a classifier needs "
                "at least two; add a folder per class, <folder>/<class name>/<image>"
            )
        for key, folder in (("val_dir", val_dir), ("test_dir", test_dir)):
            if folder is None:
                continue
            extra = sorted(set(list_class_dirs(folder)) - set(self.class_names))
            if extra:
                raise ValueError(
                    f"data.{key} {folder!r} has classes that the training folder lacks: {extra}; "
                    f"training classes are {self.class_names}"
                )

    def build_samples(self) -> tuple[Path, list[Sample]]:
        """Scan the folders and assign every image to a split."""
        source = Path(self.root or self.train_dir)  # type: ignore[arg-type]
        folders = {"train": source}
        if self.val_dir:
            folders["val"] = Path(self.val_dir)
        if self.test_dir:
            folders["test"] = Path(self.test_dir)
        base = Path(os.path.commonpath([str(f.resolve()) for f in folders.values()]))

        def rel(folder: Path, path: str) -> str:
            return (folder.resolve() / path).relative_to(base).as_posix()

        split_source = stratified_split(
            scan_class_folders(source, self.class_names),
            self.class_names,
            val_fraction=0.0 if self.val_dir else self.val_fraction,
            test_fraction=0.0 if self.test_dir else self.test_fraction,
            seed=self.seed,
        )
        samples = [Sample(rel(source, s.path), s.label, s.split) for s in split_source]
        for split in ("val", "test"):
            if split not in folders:
                continue
            folder = folders[split]
            present = class_dirs(folder)
            for label, name in enumerate(self.class_names):
                if name in present:
                    dirname = present[name]
                    samples += [
                        Sample(rel(folder, f"{dirname}/{p}"), label, split) for p in find_images(folder / dirname)
                    ]
        return base, samples
