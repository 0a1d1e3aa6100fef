"""Stop a run whose data became unreadable while it ran, on every rank at once, before its checkpoint is written."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class UnreadableDataCheck(Callback):
    """Before each validation and at each training epoch's end, count the files found unreadable during the run.

    The data module counts what its loaders could not read (files deleted or a disk unmounted mid-run); above its
    ``max_bad_fraction`` of the data set the run stops with the data module's message instead of training on empty
    batches. The counts of all processes are summed first, so every rank reaches the same decision at the same
    point and none is left waiting in a collective. Data modules without ``unreadable_while_running`` are ignored.
    """

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check before validating, and so before the epoch's checkpoint is saved."""
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check at the epoch's end too (runs that do not validate every epoch)."""
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        datamodule: Any = getattr(trainer, "datamodule", None)
        count_of = getattr(datamodule, "unreadable_while_running", None)
        if count_of is None:
            return
        count = int(count_of())
        if trainer.world_size > 1:
            count = int(trainer.strategy.reduce(torch.tensor(count, dtype=torch.long), reduce_op="sum"))
        datamodule.check_unreadable(count)
