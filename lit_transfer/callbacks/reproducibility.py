"""Exact resume: every training epoch and step starts from random states derived from (seed, epoch, step, rank)."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_transfer.core.seeding import mix_seed


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class EpochSeeder(Callback):
    """Reseed Python, NumPy and torch (CPU and CUDA) at every training epoch start and before every training step.

    With the data modules' epoch-seeded shuffling and per-sample augmentation seeds, a step's randomness (order,
    augmentation, dropout) depends only on the seed, the epoch and the step's index in it, so a run resumed from any
    checkpoint, an epoch-end one or a mid-epoch ``interrupted.ckpt``, finishes with weights bitwise identical to an
    uninterrupted run. Nothing random needs to be stored in the checkpoint.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Seed every generator from ``(seed, epoch, global rank)``."""
        _seed_all(mix_seed(self.seed, trainer.current_epoch, trainer.global_rank))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
                             ) -> None:  # fmt: skip
        """Seed every generator from ``(seed, epoch, step in the epoch, global rank)``."""
        _seed_all(mix_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))
