"""Setup's scan: the samples of every split and the files of ``predict_dir``, with unreadable files screened out.

:meth:`BaseImageDataModule.setup <lit_transfer.data.base.BaseImageDataModule.setup>` runs the scans on rank 0 and
broadcasts what they return; every rank then builds the datasets of the splits from it (:func:`split_datasets`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lit_transfer.core.batches import BadSample
from lit_transfer.data import screening
from lit_transfer.data.dataset import BadImagePolicy
from lit_transfer.data.images import collect_unreadable, find_images
from lit_transfer.data.splits import Sample, group_by_split

MakeDataset = Callable[[str | Path, Sequence[str], Sequence[int], str], Dataset]  # BaseImageDataModule.make_dataset
Remember = Callable[[list[BadSample]], None]  # records unreadable files (or folders) as the scan finds them


@dataclass(frozen=True)
class BadImageRules:
    """How a scan treats unreadable files: a data module's ``bad_images``, ``check_images`` and ``max_bad_fraction``."""

    bad_images: BadImagePolicy
    check_images: bool
    max_bad_fraction: float


def screen_samples(samples: list[Sample], root: Path, rules: BadImageRules) -> tuple[list[Sample], list[BadSample]]:
    """Drop files whose header is unreadable, report them, and stop when too many are bad.

    Returns the readable samples and the unreadable files; without ``check_images``, ``samples`` as they are.
    """
    if not rules.check_images:
        return samples, []
    return screening.screen(samples, root, rules.bad_images, rules.max_bad_fraction)


def scan_samples(
    build_samples: Callable[[], tuple[Path, list[Sample]]],
    rules: BadImageRules,
    reported: Collection[str],
    remember: Remember,
) -> tuple[Path, list[Sample]]:
    """The folder the sample paths are relative to, and the readable samples of every split.

    ``build_samples`` is the data module's scan. The folders it could not list (an error under ``bad_images:
    error``; those in ``reported`` are not reported again), then the unreadable files, go to ``remember`` as they
    are found, so they are recorded even when a later step stops the scan.
    """
    with collect_unreadable() as unreadable:
        data_root, samples = build_samples()
    remember(screening.unreadable_folders(unreadable, reported, rules.bad_images))
    good, bad = screen_samples(samples, data_root, rules)
    remember(bad)
    return data_root, good


def scan_predict_dir(
    predict_dir: str, rules: BadImageRules, reported: Collection[str], remember: Remember
) -> list[str]:
    """The readable image files below ``predict_dir`` (searched recursively), relative to it.

    Unreadable folders and files go to ``remember`` as in :func:`scan_samples`.
    """
    with collect_unreadable() as unreadable:
        found = find_images(predict_dir)
    remember(screening.unreadable_folders(unreadable, reported, rules.bad_images))
    if not found:
        raise ValueError(f"data.predict_dir {predict_dir!r} holds no image files")
    samples = [Sample(p, i, "predict") for i, p in enumerate(found)]
    good, bad = screen_samples(samples, Path(predict_dir), rules)
    remember(bad)
    return [s.path for s in good]


def report_counts(owner: str, num_classes: int, samples: list[Sample]) -> None:
    """Log the number of classes and the images of each split (``owner``: the data module's class name)."""
    by_split = group_by_split(samples)
    counts = ", ".join(f"{s} {len(by_split.get(s, []))}" for s in ("train", "val", "test"))
    rank_zero_info(f"{owner}: {num_classes} classes; images: {counts}")


def split_datasets(data_root: Path, samples: list[Sample], make_dataset: MakeDataset) -> dict[str, Dataset]:
    """The ``train``, ``val`` and ``test`` datasets of ``samples`` (built in that order), from ``make_dataset``."""
    by_split = group_by_split(samples)
    datasets: dict[str, Dataset] = {}
    for split in ("train", "val", "test"):
        items = by_split.get(split, [])
        datasets[split] = make_dataset(data_root, [s.path for s in items], [s.label for s in items], split)
    return datasets


def dataset_statistics(
    data_root: Path, samples: list[Sample], make_dataset: MakeDataset, num_workers: int
) -> tuple[list[float], list[float]]:
    """Exact mean/std of the training split's pixels after the evaluation resize and crop."""
    from lit_transfer.data.stats import compute_channel_stats  # the data card imports this module

    train = [s for s in samples if s.split == "train"]
    dataset = make_dataset(data_root, [s.path for s in train], [s.label for s in train], "val")
    mean, std = compute_channel_stats(dataset, num_workers=num_workers)
    rank_zero_info(f"training split mean {[round(m, 4) for m in mean]}, std {[round(v, 4) for v in std]}")
    return mean, std
