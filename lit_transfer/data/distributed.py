"""A data module under distributed training: the processes, rank 0, and the scan it shares with the other ranks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def world_of(trainer: pl.Trainer | None) -> tuple[int, int]:
    """(number of processes, this process's rank); the data module shards loaders itself (see EpochSampler)."""
    if trainer is None:
        return 1, 0
    return trainer.world_size, trainer.global_rank


def is_rank_zero(trainer: pl.Trainer | None) -> bool:
    """Whether this process scans the data and writes the run files: rank 0, or the only process."""
    return trainer is None or trainer.is_global_zero


def broadcast(trainer: pl.Trainer | None, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if trainer is None or trainer.world_size == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)
