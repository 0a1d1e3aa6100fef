"""A rich progress bar that redraws at a human rate, so thousands of tiny steps do not pay for drawing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class ThrottledProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, redrawn at most ``max_redraws_per_second`` times a second.

    The stock bar redraws and recomputes its metrics after every batch; on the tiny steps of a head trained on cached
    features that took about a fifth of the step time (benchmarks/RESULTS.md, step overhead). The last batch of every
    loader is always drawn, so finished bars show their totals.
    """

    def __init__(self, max_redraws_per_second: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_interval = 1.0 / max_redraws_per_second if max_redraws_per_second > 0 else 0.0
        self._last_draw = float("-inf")  # the first batch is drawn at once

    def _due(self, batch_idx: int, total: Callable[[], float | int | None]) -> bool:
        # Disabled on every rank but 0 under DDP: the stock bar then never tracks the current loader, and reading a
        # total would fail its assertion, so a disabled bar must not look at them at all.
        if self.is_disabled:
            return False
        now = time.monotonic()
        count = total()
        last = count is not None and batch_idx + 1 >= count
        if last or now - self._last_draw >= self.min_interval:
            self._last_draw = now
            return True
        return False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Draw the training bar when due."""
        if self._due(batch_idx, lambda: self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw the validation bar when due."""
        if self._due(batch_idx, lambda: self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw the test bar when due."""
        if self._due(batch_idx, lambda: self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw the predict bar when due."""
        if self._due(batch_idx, lambda: self.total_predict_batches_current_dataloader):
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
