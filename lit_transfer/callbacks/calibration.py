"""Calibration on the callback side: the reliability diagram's bins, and the validation logits temperature scaling fits.

:class:`ReliabilityBins` counts, per confidence bin, the images, their summed confidence and how many were right,
summed across processes: the reliability diagram of :class:`~lit_transfer.callbacks.reports.TensorBoardReports` and
its ECE follow. :class:`ValidationLogits` keeps one validation run's logits and true classes, gathered from every
process, for ``--calibrate temperature`` (:mod:`lit_transfer.cli.calibration`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

RELIABILITY_BINS = 15  # as the ECE of lit_transfer.models.calibration (ECE_BINS) and val_ece


def confidence_bins(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Each confidence's bin, as torchmetrics' calibration error bins them.

    Bin ``i < n_bins`` holds ``[i / n_bins, (i + 1) / n_bins)`` (float32 boundaries) and bin ``n_bins`` a confidence
    of exactly 1.
    """
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return torch.bucketize(confidence, boundaries, right=True) - 1


class ReliabilityBins(Metric):
    """Per confidence bin: images, summed top-1 confidence and correct top-1 predictions, summed across processes.

    ``compute()`` gives ``(3, n_bins + 1)``: counts, confidence sums and correct counts, binned as
    :func:`confidence_bins` (the last column holds confidences of exactly 1).
    """

    full_state_update = False
    sums: torch.Tensor

    def __init__(self, n_bins: int = RELIABILITY_BINS) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.add_state("sums", torch.zeros(3, n_bins + 1, dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch of probabilities ``(B, C)`` and true classes ``(B,)``."""
        confidence, predicted = probs.float().max(dim=1)
        index = confidence_bins(confidence, self.n_bins)
        values = torch.stack([torch.ones_like(confidence), confidence, (predicted == target).float()])
        self.sums.scatter_add_(1, index.expand(3, -1), values)

    def compute(self) -> torch.Tensor:
        """The sums ``(3, n_bins + 1)``."""
        return self.sums


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's data: per bin (``n_bins`` of them) the images, mean confidence and accuracy."""

    counts: np.ndarray
    confidence: np.ndarray  # mean confidence of the bin's images (0 for an empty bin)
    accuracy: np.ndarray  # share of the bin's images classified right (0 for an empty bin)
    ece: float  # over the bins of torchmetrics (a confidence of exactly 1 in a bin of its own), as val_ece

    @property
    def total(self) -> int:
        """Images counted."""
        return int(self.counts.sum())


def reliability(sums: torch.Tensor | np.ndarray) -> Reliability:
    """The diagram's bins from :class:`ReliabilityBins` sums; the bin of confidences of exactly 1 joins the last."""
    data = np.asarray(sums, dtype=np.float64)
    counts, confidence, correct = data

    def per_bin(values: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.divide(values, n, out=np.zeros_like(values), where=n > 0)

    total = counts.sum()
    gaps = np.abs(per_bin(correct, counts) - per_bin(confidence, counts)) * counts
    ece = float(gaps.sum() / total) if total > 0 else 0.0
    merged = [np.concatenate([v[:-2], [v[-2] + v[-1]]]) for v in (counts, confidence, correct)]
    return Reliability(merged[0], per_bin(merged[1], merged[0]), per_bin(merged[2], merged[0]), ece)


class LogitStore(Metric):
    """Logits and true classes of every sample, concatenated across processes (flattened, so empty ranks join)."""

    full_state_update = False
    logits: list[torch.Tensor]
    targets: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 0
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Keep a batch: ``logits`` ``(B, C)`` (as float32), ``target`` ``(B,)``."""
        self.num_classes = int(logits.shape[1])
        self.logits.append(logits.detach().float().flatten())
        self.targets.append(target.detach().float())  # one dtype for both states: an empty rank gathers as float

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits ``(N, C)`` and targets ``(N,)`` (empty when no process saw a sample)."""
        logits, targets = _concatenated(self.logits), _concatenated(self.targets)
        n = len(targets)
        return logits.reshape(n, -1 if n else 0), targets.long()


def _concatenated(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor; after a DDP sync torchmetrics has already concatenated it into one."""
    if isinstance(state, torch.Tensor):
        return state
    return dim_zero_cat(state) if state else torch.empty(0)


class ValidationLogits(Callback):
    """Keep the logits and true classes of one validation run, gathered from every process (all ranks get all).

    The logits are the validation step's output ``{"logits": ...}`` (raw: not divided by the model's temperature),
    else a forward pass of the batch's images. After the run, :attr:`logits` ``(N, C)`` and :attr:`targets` ``(N,)``
    are on the CPU.
    """

    def __init__(self) -> None:
        self._store: LogitStore | None = None
        self.logits = torch.empty(0, 0)
        self.targets = torch.empty(0, dtype=torch.long)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start with an empty store on the model's device (every rank: the gathering is a collective)."""
        self._store = LogitStore().to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep this batch's logits and true classes."""
        y = batch[1]
        if self._store is None or len(y) == 0:
            return
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(batch[0])
        self._store.update(logits, y)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the logits of every process."""
        if self._store is None:
            return
        with warnings.catch_warnings():
            # a process that saw no batch computes only to take its part in the gathering
            warnings.filterwarnings("ignore", message="The ``compute`` method of metric", category=UserWarning)
            logits, targets = self._store.compute()
        self.logits, self.targets = logits.cpu(), targets.cpu()
        self._store = None
