"""RotNetClassifier: TransferClassifier for rotation prediction, with angle metrics and the RotNet prediction writer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

from lit_transfer.core.angles import class_angles
from lit_transfer.core.contract import PredictViewInfo
from lit_transfer.models.classifier import TransferClassifier
from lit_transfer.models.metrics import STAGES


def circular_angle_error(predicted: Tensor, target: Tensor) -> Tensor:
    """``|predicted - target|`` in degrees, folded into [0°, 180°] (350° against 10° is 20°)."""
    return torch.remainder(predicted - target + 180.0, 360.0).sub(180.0).abs()


class CircularAngleError(Metric):
    """Mean or median circular error in degrees between the predicted class's angle and the true class's angle.

    ``update`` takes logits ``(N, C)`` (or predicted classes ``(N,)``) and true classes, so it sits in a
    ``MetricCollection`` beside accuracy; errors are gathered across processes before the median is taken.
    In ``binned`` mode each class's angle is its bin's centre (``k`` steps: bins are centred on the multiples of the
    step), so this is the error between bin centres.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    angles: Tensor  # buffer
    errors: list[Tensor]  # metric state

    def __init__(self, angles: Sequence[float], reduction: Literal["mean", "median"] = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "median"):
            raise ValueError(f"reduction={reduction!r}: use 'mean' or 'median'")
        self.reduction = reduction
        self.register_buffer("angles", torch.tensor(list(angles), dtype=torch.float32), persistent=False)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predictions (logits or classes) and true classes."""
        predicted = preds.argmax(dim=1) if preds.ndim == 2 else preds
        angles = self.angles.to(preds.device)
        self.errors.append(circular_angle_error(angles[predicted.long()], angles[target.long()]))

    def compute(self) -> Tensor:
        """The mean or median error in degrees (NaN before any update)."""
        errors = dim_zero_cat(self.errors) if self.errors else torch.empty(0)
        if errors.numel() == 0:
            return torch.tensor(math.nan)
        return errors.mean() if self.reduction == "mean" else errors.quantile(0.5)


class RotationConfusion(MulticlassConfusionMatrix):
    """Confusion matrix over rotation classes; its value (what gets logged) is the parity accuracy.

    Parity accuracy is the share of views whose predicted class has the parity of the true one: with 45° steps,
    whether the model tells odd multiples of 45° (the interpolated rotations) from multiples of 90°. Chance is 0.5;
    a network that reaches it on content-free images reads the angle from rotation artifacts. After
    :meth:`compute`, :attr:`matrix` holds the (synchronised) counts, rows true, columns predicted.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.matrix: Tensor | None = None

    def compute(self) -> Tensor:
        """Parity accuracy; the counts go to :attr:`matrix`."""
        counts = self.confmat.detach().clone()
        self.matrix = counts.cpu()
        return parity_accuracy(counts)


def parity_accuracy(matrix: Tensor) -> Tensor:
    """Share of a confusion matrix's counts whose predicted and true classes have the same parity."""
    index = torch.arange(matrix.shape[0], device=matrix.device)
    same = (index[:, None] % 2) == (index[None, :] % 2)
    total = matrix.sum()
    return (matrix * same).sum() / total if total > 0 else torch.tensor(math.nan)


def format_confusion(matrix: Tensor, class_names: Sequence[str]) -> str:
    """A Markdown table of a confusion matrix (rows: true rotation, columns: predicted)."""
    header = "| true \\ predicted | " + " | ".join(class_names) + " |"
    lines = [header, "|---" * (len(class_names) + 1) + "|"]
    for name, row in zip(class_names, matrix.tolist(), strict=True):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines)


class RotNetClassifier(TransferClassifier):
    """TransferClassifier for the RotNet pretext task: the same backbone and head, plus angle metrics.

    Its arguments are TransferClassifier's; the class names (``0°``, ``45°``, … from ``RotNetDataModule``) give each
    class its angle. Beside loss, accuracy and F1 it logs, per stage:

    - ``<stage>_angle_error`` and ``<stage>_angle_error_median``: circular error of the predicted angle in degrees;
    - ``<stage>_parity_acc``: odd/even rotation accuracy (chance 0.5), the leak detector of ``audit-rotnet``;
    - the confusion matrix over rotation classes, as a TensorBoard text table (and in :attr:`confusion`).

    Parameters keep TransferClassifier's names (``backbone.*``, ``head.*``), so a RotNet checkpoint is a valid
    ``weights:`` value of a TransferClassifier: its backbone loads, its head is dropped. ``predict`` writes
    ``predictions.csv`` with the predicted angle and the whole distribution, and uprights the images when the data
    module has ``write_upright`` (see :class:`lit_transfer.callbacks.upright.RotationPredictionWriter`).
    """

    def setup(self, stage: str) -> None:
        """Add the rotation metrics to every stage's metric collection (once, before the model moves to a device)."""
        super().setup(stage)
        self.add_rotation_metrics()

    def add_rotation_metrics(self) -> None:
        """Angle error (mean, median) and the parity/confusion metric in each stage's collection; idempotent."""
        angles = class_angles(self.class_names)
        num_classes = len(self.class_names)
        for split in STAGES:
            collection = self._stage_metrics(split)
            if "angle_error" in collection:
                continue
            collection.add_metrics(
                {
                    "angle_error": CircularAngleError(angles, "mean"),
                    "angle_error_median": CircularAngleError(angles, "median"),
                    "parity_acc": RotationConfusion(num_classes, validate_args=False),
                }
            )
        self.confusion: dict[str, Tensor] = getattr(self, "confusion", {})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """TransferClassifier's entry, plus how the data module made the ``predict`` view (``rotation``), for export.

        A photo's input is the RotNet source square, low-passed or not, cropped or squashed (see
        :func:`lit_transfer.data.rotnet.predict_preprocessing`); an export that guessed it would feed the model
        images it never saw.
        """
        super().on_save_checkpoint(checkpoint)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(datamodule, PredictViewInfo):
            checkpoint.setdefault("lit_transfer", {})["rotation"] = datamodule.predict_preprocessing()

    @property
    def class_angles(self) -> list[float]:
        """Each class's angle in degrees, counter-clockwise."""
        return class_angles(self.class_names)

    def _report_confusion(self, stage: str) -> None:
        collection = self._stage_metrics(stage)
        if self.trainer.sanity_checking or "parity_acc" not in collection:
            return
        metric = cast(RotationConfusion, collection["parity_acc"])  # added by add_rotation_metrics
        if not metric.update_called:
            return
        metric.compute()  # synchronised when the epoch's metrics were computed; cached until the reset
        if metric.matrix is None:
            return
        self.confusion[stage] = metric.matrix
        table = format_confusion(metric.matrix, self.class_names)
        if stage == "test":
            rank_zero_info(f"test confusion matrix (rows: true rotation, columns: predicted):\n{table}")
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            self.logger.experiment.add_text(f"confusion_{stage}", table, self.global_step)

    def on_epoch_metrics(self, stage: str) -> None:
        """Keep and log the validation and test confusion matrices (printed after ``test``)."""
        if stage in ("val", "test"):
            self._report_confusion(stage)

    def configure_callbacks(self) -> list[Callback]:
        """The RotNet prediction writer; being a PredictionWriter, it replaces the CLI's default one."""
        from lit_transfer.callbacks.upright import RotationPredictionWriter

        return [RotationPredictionWriter()]
