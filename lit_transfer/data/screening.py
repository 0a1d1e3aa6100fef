"""Bad-image screening: unreadable files and folders found at setup, and the share that became unreadable mid-run."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from lit_transfer.core.batches import BadSample
from lit_transfer.data.dataset import BadImagePolicy
from lit_transfer.data.images import BadImageError, check_image_header
from lit_transfer.data.run_files import BAD_IMAGES_NAME
from lit_transfer.data.splits import Sample


def _listing(bad: list[BadSample]) -> str:
    return "; ".join(f"{b.path} ({b.reason})" for b in bad[:10]) + (" …" if len(bad) > 10 else "")


def unreadable_folders(
    folders: list[tuple[str, str]], reported: Collection[str], bad_images: BadImagePolicy
) -> list[BadSample]:
    """Folders the scan could not list: an error under ``bad_images: error``, else a warning and CSV rows.

    Returns the folders not in ``reported`` yet, as the rows to add to ``bad_images.csv``.
    """
    new = [BadSample(path, "", reason) for path, reason in folders if path not in reported]
    if not new:
        return new
    listing = _listing(new)
    if bad_images == "error":
        raise BadImageError(
            f"{len(new)} folder(s) cannot be read, so their images would be left out: {listing}. Fix the "
            "permissions, or set data.init_args.bad_images: skip"
        )
    rank_zero_warn(
        f"{len(new)} folder(s) cannot be read and their images are left out: {listing}; listed in "
        f"{BAD_IMAGES_NAME} in the run folder"
    )
    return new


def screen(
    samples: list[Sample], root: Path, bad_images: BadImagePolicy, max_bad_fraction: float
) -> tuple[list[Sample], list[BadSample]]:
    """Drop files whose header is unreadable, report them, and stop when too many are bad.

    Returns the readable samples (``samples`` itself when none is bad) and the unreadable files.
    """
    good, bad = [], []
    for sample in samples:
        reason = check_image_header(root / sample.path)
        if reason is None:
            good.append(sample)
        else:
            bad.append(BadSample(str(root / sample.path), sample.split, reason))
    if not bad:
        return samples, bad
    listing = _listing(bad)
    if bad_images == "error":
        raise BadImageError(
            f"{len(bad)} unreadable image(s): {listing}. Fix or remove them, or set data.init_args.bad_images: skip"
        )
    fraction = len(bad) / len(samples)
    if fraction > max_bad_fraction:
        raise BadImageError(
            f"{len(bad)} of {len(samples)} images ({fraction:.1%}) are unreadable, more than "
            f"data.init_args.max_bad_fraction={max_bad_fraction}: {listing}"
        )
    rank_zero_warn(f"skipping {len(bad)} unreadable image(s), listed in {BAD_IMAGES_NAME} in the run folder")
    return good, bad


def check_bad_during_run(count: int, total: int, max_bad_fraction: float, example: BadSample | None) -> None:
    """Stop when more than ``max_bad_fraction`` of the images became unreadable while running.

    Files deleted or a disk unmounted mid-run: training on what is left would end with exit status 0 and a
    meaningless model. Counted as at setup, over every image of the data set: ``count`` files found unreadable
    so far by every process, ``total`` the images of every split, ``example`` the latest bad file.
    """
    if total and count > max_bad_fraction * total:
        seen = f"; e.g. {example.path}: {example.reason}" if example is not None else ""
        raise BadImageError(
            f"{count} of the {total} images could not be read during the run, more than "
            f"data.init_args.max_bad_fraction={max_bad_fraction}{seen}. The data changed or became unreadable while "
            f"training: restore it and resume with --ckpt_path last (each file is listed in {BAD_IMAGES_NAME})"
        )
