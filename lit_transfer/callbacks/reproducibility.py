"""Exact resume: every training epoch and step starts from random states derived from (seed, epoch, step, rank)."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lit_transfer.core.seeding import mix_seed


def device_backends() -> tuple[Any, ...]:
    """The device backends of ``torch.manual_seed`` (CUDA, XPU, MTIA, MPS) that are present in this process.

    Checked once per epoch, not per step: with Lightning's NVML-based CUDA check, ``torch.cuda.is_available()`` opens
    the NVML library each time it is asked.
    """
    lazy = [b for b in (torch.cuda, torch.xpu, torch.mtia) if b.is_initialized() or b.is_available()]
    return (*lazy, torch.mps) if torch.backends.mps.is_available() else tuple(lazy)


def _seed_torch(seed: int, backends: tuple[Any, ...]) -> None:
    """What ``torch.manual_seed`` does, without its cost for the device backends that are absent.

    ``torch.manual_seed`` also queues a lazy seed for CUDA, XPU and MTIA, formatting a stack trace for each when the
    backend is not initialized: about 90 µs per call on a CPU-only machine, a tenth of a tiny head's training step.
    The ``backends`` present (:func:`device_backends`) are seeded as ``torch.manual_seed`` seeds them.
    """
    torch.default_generator.manual_seed(seed)
    for backend in backends:
        if backend is torch.mps:
            backend.manual_seed(seed)
        else:
            backend.manual_seed_all(seed)  # applied when the device initializes, if it has not yet


def _seed_all(seed: int, backends: tuple[Any, ...]) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _seed_torch(seed, backends)


class EpochSeeder(Callback):
    """Reseed Python, NumPy and torch (CPU and CUDA) at every training epoch start and before every training step.

    With the data modules' epoch-seeded shuffling and per-sample augmentation seeds, a step's randomness (order,
    augmentation, dropout) depends only on the seed, the epoch and the step's index in it, so a run resumed from any
    checkpoint, an epoch-end one or a mid-epoch ``interrupted.ckpt``, finishes with weights bitwise identical to an
    uninterrupted run. Nothing random needs to be stored in the checkpoint.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._backends: tuple[Any, ...] | None = None  # found at each epoch start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Seed every generator from ``(seed, epoch, global rank)``."""
        self._backends = device_backends()
        _seed_all(mix_seed(self.seed, trainer.current_epoch, trainer.global_rank), self._backends)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
                             ) -> None:  # fmt: skip
        """Seed every generator from ``(seed, epoch, step in the epoch, global rank)``."""
        if self._backends is None:
            self._backends = device_backends()
        _seed_all(mix_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank), self._backends)
