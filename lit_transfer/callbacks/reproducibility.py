"""Exact resume: every training epoch starts from random states derived from (seed, epoch, rank)."""

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
    """Reseed Python, NumPy and torch (CPU and CUDA) at every training epoch start.

    With the data modules' epoch-seeded shuffling and per-sample augmentation seeds, an epoch's randomness (order,
    augmentation, dropout) depends only on the seed and the epoch number, so a run resumed from an epoch-end
    checkpoint finishes with weights bitwise identical to an uninterrupted run. Nothing random needs to be stored
    in the checkpoint.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Seed every generator from ``(seed, epoch, global rank)``."""
        seed = mix_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # also seeds every CUDA device
