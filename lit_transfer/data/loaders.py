"""Building a data module's loaders: workers, pinning, epoch-seeded sampling, mid-epoch resume, cached features."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_transfer.core.batches import keep_batch
from lit_transfer.data.collate import collate_skipping_bad
from lit_transfer.data.resumable import ResumableLoader, ResumeSampler

D = TypeVar("D", bound=Dataset)


def default_num_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def non_empty(split: str, dataset: D | None) -> D:
    """``dataset``; refuses to build a loader over an empty split, naming the settings that give it images."""
    if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"the {split} split is empty: give it images (a {split} folder or a positive {split}_fraction)"
        )
    return dataset


def pin_memory_for(trainer: pl.Trainer | None, pin_memory: bool | None) -> bool:
    """``pin_memory``, or (``None``) whether the batches go to a GPU."""
    if pin_memory is not None:
        return pin_memory
    return bool(trainer is not None and trainer.accelerator.__class__.__name__ == "CUDAAccelerator")


def loader_workers(trainer: pl.Trainer | None, num_workers: int, auto: bool) -> int:
    """Loader processes per training process: ``num_workers``, or this process's share of the cores when ``auto``."""
    if auto and trainer is not None and trainer.num_devices > 1:
        return max(1, num_workers // trainer.num_devices)  # the processes of a node share its cores
    return num_workers


def loader_epoch(trainer: pl.Trainer | None) -> int:
    """The epoch a loader built now first iterates: the value Lightning passes to ``set_epoch`` next."""
    if trainer is None:
        return 0
    # annotated as the base tracker by Lightning; at runtime a _ProcessedTracker, with ``processed``
    return int(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]


def epoch_batches_done(trainer: pl.Trainer | None) -> int:
    """Batches of the current epoch the training loop has finished (what a mid-epoch checkpoint has trained)."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # type: ignore[attr-defined]  # as above


def start_at_epoch(sampler: Sampler, epoch: int) -> None:
    """Set a new loader's sampler to the epoch it first iterates (samplers without ``set_epoch`` are left alone)."""
    set_epoch = getattr(sampler, "set_epoch", None)
    if set_epoch is not None:
        # Lightning creates a new loader's iterator before it calls set_epoch, and loader workers draw their first
        # indices from the sampler right then: left at epoch 0, the first epoch of a resumed run would replay
        # epoch 0's order and augmentations (the issue-12 resume mismatch with workers)
        set_epoch(epoch)


def drops_single_image_batch(split: str, batch_size: int, per_process: int) -> bool:
    """Whether the loader leaves out the last batch of an epoch (``drop_last``).

    A last training batch of one image cannot train BatchNorm ("Expected more than 1 value per channel"), and
    would weigh one image as much as a whole batch: leave it out of that epoch (shuffling varies which image).
    """
    return split == "train" and batch_size > 1 and per_process % batch_size == 1


def tell_drop_last(per_process: int, batch_size: int) -> None:
    """Say (once per data module, the caller keeps track) that each training epoch leaves out its last batch."""
    rank_zero_info(
        f"each training epoch leaves out its last batch, which would hold a single image ({per_process} "
        f"images per process, batch_size {batch_size})"
    )


def build_loader(
    dataset: Dataset,
    split: str,
    sampler: Sampler,
    *,
    batch_size: int,
    drop_last: bool,
    pin_memory: bool,
    num_workers: int,
    persistent_workers: bool,
    timeout: float,
    seed: int,
    progress: Callable[[], int],
    cached: Dataset | None = None,
) -> DataLoader:
    """The loader of ``split``: over ``cached`` (the dataset wrapper's replacement) when given, else ``dataset``.

    The training loader resumes mid-epoch at the batch ``progress`` reports (an interrupted.ckpt's). ``cached``
    is read in the main process with ``sampler``, so its batches are the image loader's.
    """
    loader: Any = DataLoader
    options: dict[str, Any] = {}
    if split == "train":  # resumes mid-epoch at the batch where an interrupted.ckpt stopped
        loader, sampler, options = ResumableLoader, ResumeSampler(sampler), {"progress": progress}
    if cached is not None:
        # the same sampler over the cached features: the same batches as the image loader, without decoding
        steps = int(getattr(cached, "steps_per_batch", 1))  # fused steps: several batches at a time
        return loader(
            cached,
            batch_size=batch_size * steps,
            sampler=sampler,
            num_workers=0,
            collate_fn=keep_batch,
            drop_last=drop_last and steps == 1,  # fused: the dataset leaves out a last batch of one row itself
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
            **options,
        )
    return loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping_bad,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        timeout=timeout if num_workers > 0 else 0,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
