"""Epoch metrics of the classifier: the per-stage collections, buffered updates, and deferred finiteness checks.

Metric inputs are buffered and handed to torchmetrics once per :data:`METRIC_FLUSH_BATCHES` batches: one update over
many batches gives the same counts as one per batch, at a fraction of the per-call cost (benchmarks/RESULTS.md,
step overhead). Training losses are checked for NaN/inf when the buffer is flushed (and before any checkpoint is
written), not every step, so the host does not wait for the device at each step.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from lit_transfer.core.contract import trainer_data_info
from lit_transfer.core.metric_names import logged_names as logged_names  # re-exported
from lit_transfer.models.calibration import ECE_BINS, SoftmaxCalibrationError

STAGES: tuple[str, ...] = ("train", "val", "test")
METRIC_FLUSH_BATCHES = 32  # batches whose metric inputs are buffered before one torchmetrics update


class ClassificationCounts(Metric):
    """Accuracy, macro F1 and (``top_k`` > 0) top-k accuracy of an epoch from per-class counts, in one pass.

    The same values as torchmetrics' ``MulticlassAccuracy`` (micro, and ``top_k``) and ``MulticlassF1Score``
    (macro: classes that are neither predicted nor present are left out, as scikit-learn leaves them out), for a
    third of their update cost: one arg-max, three ``bincount`` calls and one ``topk`` per update, where the three
    metrics each build their own statistics (``benchmarks/RESULTS.md``, step overhead). The state is three counts
    per class, summed across processes.
    """

    full_state_update = False
    hits: torch.Tensor
    predicted: torch.Tensor
    actual: torch.Tensor
    top_hits: torch.Tensor

    def __init__(self, num_classes: int, top_k: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.top_k = num_classes, top_k
        for name in ("hits", "predicted", "actual"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("top_hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def names(self) -> list[str]:
        """The keys :meth:`compute` returns."""
        return ["acc", "f1", *([f"acc_top{self.top_k}"] if self.top_k else [])]

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count a batch's ``(N, C)`` scores against its ``(N,)`` labels."""
        predicted = logits.argmax(dim=1)
        self.hits += torch.bincount(targets[predicted == targets], minlength=self.num_classes)
        self.predicted += torch.bincount(predicted, minlength=self.num_classes)
        self.actual += torch.bincount(targets, minlength=self.num_classes)
        if self.top_k:
            self.top_hits += (logits.topk(self.top_k, dim=1).indices == targets[:, None]).any(dim=1).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """``acc``, ``f1`` and (with ``top_k``) ``acc_top<k>``."""
        total = self.actual.sum().clamp(min=1).float()
        tp = self.hits.float()
        errors = (self.predicted - self.hits + self.actual - self.hits).float()  # false positives + false negatives
        seen = (tp + errors) > 0
        f1 = torch.where(seen, 2 * tp / (2 * tp + errors).clamp(min=1), torch.zeros_like(tp))
        out = {"acc": tp.sum() / total, "f1": f1.sum() / seen.sum().clamp(min=1).float()}
        if self.top_k:
            out[f"acc_top{self.top_k}"] = self.top_hits.float() / total
        return out


def stage_metrics(num_classes: int) -> nn.ModuleDict:
    """``<stage>_metrics`` collections (accuracy, macro F1, top-5 accuracy above five classes) for every stage.

    Validation and test add the expected calibration error (``val_ece``, ``test_ece``: 15 bins, L1), which keeps two
    numbers per image until the epoch ends; training images are augmented, and their calibration is not the model's.
    """
    counts = ClassificationCounts(num_classes, top_k=5 if num_classes > 5 else 0)
    base = MetricCollection({"counts": counts}, compute_groups=False)
    collections = {f"{s}_metrics": base.clone(prefix=f"{s}_") for s in STAGES}
    for stage in ("val", "test"):
        ece = SoftmaxCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1", validate_args=False)
        collections[f"{stage}_metrics"].add_metrics({"ece": ece})
    return nn.ModuleDict(collections)


def stage_losses() -> nn.ModuleDict:
    """``<stage>_loss`` weighted means (exact, synchronised across processes) for every stage."""
    # (nan_strategy="disable" would save a sync per flush, but torchmetrics 1.9 then drops the weights)
    return nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})


class UncheckedLoss(NamedTuple):
    """A training loss not yet checked for finiteness, and where it came from."""

    finite: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor | None
    step: int
    epoch: int


class MetricBuffer:
    """Each stage's buffered metric inputs ``(logits, targets, loss)``, and the training losses not yet checked."""

    def __init__(self) -> None:
        self.inputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in STAGES}
        self.unchecked: list[UncheckedLoss] = []

    def add(self, stage: str, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> bool:
        """Keep a batch's metric inputs; whether the buffer of ``stage`` is now full (time to flush)."""
        buffer = self.inputs[stage]
        buffer.append((logits, targets, loss))
        return len(buffer) >= METRIC_FLUSH_BATCHES

    def defer_check(self, loss: torch.Tensor, indices: torch.Tensor | None, step: int, epoch: int) -> None:
        """Remember a training loss, to be checked for finiteness at the next :meth:`first_non_finite`."""
        self.unchecked.append(UncheckedLoss(torch.isfinite(loss), loss, indices, step, epoch))

    def first_non_finite(self) -> UncheckedLoss | None:
        """The first non-finite loss among those not checked yet (one device sync for all of them); forgets them."""
        pending, self.unchecked = self.unchecked, []
        if not pending or bool(torch.stack([p.finite for p in pending]).all()):
            return None
        return next(p for p in pending if not bool(p.finite))

    def flush(self, stage: str, losses: MeanMetric, metrics: MetricCollection) -> None:
        """Hand the buffered batches of ``stage`` to its loss mean and metric collection, and empty the buffer."""
        buffer = self.inputs[stage]
        if not buffer:
            return
        logits, targets, batch_losses = zip(*buffer, strict=True)
        buffer.clear()
        sizes = torch.tensor([len(t) for t in targets], dtype=torch.float32, device=batch_losses[0].device)
        losses.update(torch.stack(batch_losses).float(), weight=sizes)
        metrics.update(torch.cat(logits), torch.cat(targets))

    def clear(self, stage: str) -> None:
        """Forget the buffered inputs of ``stage`` (and, for ``train``, the unchecked losses)."""
        self.inputs[stage].clear()
        if stage == "train":
            self.unchecked.clear()


def compute_epoch(loss: MeanMetric, metrics: MetricCollection, stage: str) -> dict[str, Any]:
    """The epoch's loss and metrics of ``stage`` (synchronised across processes)."""
    with warnings.catch_warnings():
        # a process that saw no batch computes only to take its part in the synchronisation
        warnings.filterwarnings("ignore", message="The ``compute`` method of metric", category=UserWarning)
        return {f"{stage}_loss": loss.compute(), **metrics.compute()}


def any_rank_updated(trainer: Any, updated: bool, device: torch.device) -> bool:
    """Whether any process saw a batch: computing synchronises, so all of them must decide alike.

    A process can see none (its shard of the validation files was unreadable, or it got no file at all) while the
    others did; if it skipped ``compute`` the others would wait for it in the metrics' collective.
    """
    if trainer is None or trainer.world_size == 1:
        return updated
    count = trainer.strategy.reduce(torch.tensor(float(updated), device=device), reduce_op="sum")
    return bool(count > 0)


class EpochMetricsModule(pl.LightningModule):
    """LightningModule base of the classifiers: buffered epoch metrics and deferred finiteness checks of the loss.

    A subclass calls :meth:`init_epoch_metrics` in ``__init__``, hands every step's outputs to :meth:`_buffer` and
    every training loss to ``self._metric_buffer.defer_check``; the epoch hooks here log ``<stage>_loss`` and
    ``<stage>_<metric>`` at each epoch's end. ``hparams.on_nonfinite_loss`` (``error`` or ``skip``) decides what a
    NaN/inf training loss does.
    """

    metrics: nn.ModuleDict
    losses: nn.ModuleDict
    skipped_batches: int
    _metric_buffer: MetricBuffer

    def init_epoch_metrics(self, num_classes: int) -> None:
        """Create every stage's metric collection and loss mean, the metric buffer, and the skipped-batch count."""
        self.skipped_batches = 0
        self.metrics = stage_metrics(num_classes)
        self.losses = stage_losses()
        self._metric_buffer = MetricBuffer()

    def _stage_loss(self, stage: str) -> MeanMetric:
        """The loss mean of ``stage`` (``nn.ModuleDict`` items are typed as plain modules)."""
        return cast(MeanMetric, self.losses[f"{stage}_loss"])

    def _stage_metrics(self, stage: str) -> MetricCollection:
        """The metric collection of ``stage``."""
        return cast(MetricCollection, self.metrics[f"{stage}_metrics"])

    def _buffer(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep a batch's metric inputs; torchmetrics is updated once per ``METRIC_FLUSH_BATCHES`` batches."""
        if self._metric_buffer.add(stage, logits, y, loss):
            self._flush(stage)

    def _flush(self, stage: str) -> None:
        """Check the buffered training losses are finite, then hand the buffered batches to the metrics."""
        if stage == "train":
            self.check_finite()
        self._metric_buffer.flush(stage, self._stage_loss(stage), self._stage_metrics(stage))

    def check_finite(self) -> None:
        """Stop at the first non-finite training loss since the last check, naming its step and files."""
        bad = self._metric_buffer.first_non_finite()
        if bad is not None:
            self._non_finite(bad.loss.item(), bad.indices, bad.step, bad.epoch)

    def _log_epoch(self, stage: str) -> None:
        """Compute (synchronised across processes), log and reset the epoch's loss and metrics of ``stage``."""
        self._flush(stage)
        loss, metrics = self._stage_loss(stage), self._stage_metrics(stage)
        if any_rank_updated(self._trainer, loss.update_called, self.device):
            self.log_dict(compute_epoch(loss, metrics, stage), prog_bar=True)
            self.on_epoch_metrics(stage)
        loss.reset()
        metrics.reset()

    def on_epoch_metrics(self, stage: str) -> None:
        """Called with the epoch's metrics of ``stage`` computed and not yet reset (for subclasses' reports)."""

    def on_train_epoch_end(self) -> None:
        """Log the training epoch's loss and metrics."""
        self._log_epoch("train")

    def on_validation_epoch_start(self) -> None:
        """Start the validation epoch with an empty metric buffer."""
        self._metric_buffer.clear("val")

    def on_validation_epoch_end(self) -> None:
        """Log the validation loss and metrics."""
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        """Start the test epoch with an empty metric buffer."""
        self._metric_buffer.clear("test")

    def on_test_epoch_end(self) -> None:
        """Log the test loss and metrics."""
        self._log_epoch("test")

    def _non_finite(self, loss: float, indices: torch.Tensor | None, step: int, epoch: int) -> None:
        """Stop (before any checkpoint holds NaN weights) or skip the batch, naming its files."""
        files: list[str] = []
        data = trainer_data_info(self)
        if indices is not None and data is not None:
            files = data.paths_of("train", indices.tolist())
        shown = ", ".join(files[:8]) + (" …" if len(files) > 8 else "")
        where = f"epoch {epoch}, step {step}"
        if self.hparams["on_nonfinite_loss"] == "skip":
            self.skipped_batches += 1
            rank_zero_warn(f"skipped a batch with loss {loss} at {where} (#{self.skipped_batches}): {shown}")
            return None
        raise FloatingPointError(
            f"training loss is {loss} at {where}; batch files: {shown or 'unknown'}. Lower the learning rate, "
            "check these images, or set model.init_args.on_nonfinite_loss: skip"
        )
