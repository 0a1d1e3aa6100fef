"""TensorBoard reports: batch grid, confusion matrix, per-class metrics, PR curves, reliability, confident mistakes.

The custom-scalars layout (train and val on one chart) is in :mod:`~lit_transfer.callbacks.layout`.

The drawings themselves are in :mod:`~lit_transfer.callbacks.report_drawing`; the names other code imports from here
stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from lit_transfer.callbacks.calibration import ReliabilityBins, reliability
from lit_transfer.callbacks.layout import logged_metric_names, scalar_charts, write_layout
from lit_transfer.callbacks.report_drawing import class_metrics as class_metrics  # re-exported
from lit_transfer.callbacks.report_drawing import (
    format_class_table,
    format_top_confusions,
    mistakes_grid,
    mistakes_table,
    render_reliability_diagram,
    to_uint8,
)
from lit_transfer.callbacks.report_drawing import render_confusion_matrix as render_confusion_matrix  # re-exported
from lit_transfer.core.batches import FeatureBatch
from lit_transfer.core.contract import data_info
from lit_transfer.core.tta import main_view

TAG = "reports"
PR_THRESHOLDS = 33  # points of each PR curve (TensorBoard's default is 127)
TOP_CONFUSIONS = 20  # lines of reports/top_confusions


class BinnedPRCounts(Metric):
    """One-vs-rest positives and negatives of each class per probability bucket, summed across processes.

    ``counts[0, c, b]`` counts the samples of class ``c`` whose probability of ``c`` falls in bucket ``b`` (of
    ``floor(p * (num_thresholds - 1))``, as TensorBoard's ``add_pr_curve`` buckets them), ``counts[1, c, b]`` the
    other samples: the PR curve of every class at every threshold ``b / (num_thresholds - 1)`` follows, without
    keeping the probabilities.
    """

    full_state_update = False
    counts: torch.Tensor

    def __init__(self, num_classes: int, num_thresholds: int = PR_THRESHOLDS) -> None:
        super().__init__()
        self.num_classes, self.num_thresholds = num_classes, num_thresholds
        self.add_state("counts", torch.zeros(2, num_classes, num_thresholds, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch: ``probs`` ``(B, C)`` (its first ``num_classes`` columns), ``target`` ``(B,)``."""
        n, t = self.num_classes, self.num_thresholds
        bucket = probs[:, :n].float().mul(t - 1).floor().long().clamp_(0, t - 1)
        classes = torch.arange(n, device=probs.device)
        negative = (target[:, None] != classes).long()
        index = (negative * (n * t) + classes * t + bucket).flatten()
        # scatter_add_, not bincount: bincount makes the host wait for the device to size its output
        self.counts.view(-1).scatter_add_(0, index, torch.ones_like(index))

    def compute(self) -> torch.Tensor:
        """The counts ``(2, num_classes, num_thresholds)``."""
        return self.counts


def pr_curve_data(positives: np.ndarray, negatives: np.ndarray) -> dict[str, np.ndarray]:
    """True/false positive/negative counts, precision and recall at each threshold, as ``add_pr_curve`` computes them.

    ``positives`` and ``negatives`` are one class's bucket counts (:class:`BinnedPRCounts`); threshold ``i`` predicts
    the class for probabilities of ``i / (len - 1)`` or more.
    """
    tp = np.cumsum(positives[::-1].astype(np.float64))[::-1]
    fp = np.cumsum(negatives[::-1].astype(np.float64))[::-1]
    tn, fn = fp[0] - fp, tp[0] - tp
    precision = tp / np.maximum(1e-7, tp + fp)
    recall = tp / np.maximum(1e-7, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision, "recall": recall}


class TensorBoardReports(Callback):
    """Images and tables for TensorBoard that scalars cannot show.

    - at the first training batch of a fit: a grid of the augmented batch as the model sees it (``reports/train_batch``,
      labels in ``reports/train_batch_labels``), and the model graph with ``log_graph``;
    - at fit start, once per run folder: a custom-scalars layout named after the experiment (CUSTOM SCALARS tab: loss,
      accuracy with top-5, F1, … with train and val on one chart, and the learning rate of every parameter group);
    - at the end of every ``every_n_epochs``-th validation: the confusion matrix (``reports/confusion_matrix``), the
      most frequent confusions (``reports/top_confusions``), a per-class precision/recall/F1 table
      (``reports/per_class``), one-vs-rest PR curves of the first ``pr_curves_max_classes`` classes
      (``reports/pr_curve/<class>``, PR CURVES tab), the reliability diagram (``reports/reliability_diagram``: per
      confidence bin the accuracy against the diagonal, the gap to the mean confidence and the images, the ECE in its
      title; the model's probabilities, divided by its ``temperature`` when calibrated) and the ``max_mistakes`` most
      confidently wrong validation images with their true and predicted classes (``reports/top_mistakes``, as a table
      in ``reports/top_mistakes_table``).

    The confusion matrix, the PR curves' bucket counts and the reliability bins are torchmetrics metrics
    (synchronized across ranks); the mistakes are kept on the CPU as the validation runs (never more than
    ``2 * max_mistakes`` images) and gathered from every rank at the end. Only rank zero writes. The logits come
    from the validation step's output ``{"logits": ...}`` when the model returns one, else from a second forward
    pass. Without a TensorBoard logger the callback does nothing.

    Args:
        every_n_epochs: report every this many validation epochs.
        max_images: training images in the batch grid.
        max_mistakes: most confident mistakes shown.
        log_graph: also log the model graph (traced once on the first training images, in eval mode).
        tile_size: width in pixels of each image in the mistakes grid.
        pr_curves_max_classes: PR curves for at most this many classes (the first ones); 0: none.
        layout: write the custom-scalars layout.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_images: int = 32,
        max_mistakes: int = 16,
        log_graph: bool = False,
        tile_size: int = 112,
        pr_curves_max_classes: int = 30,
        layout: bool = True,
    ) -> None:
        if every_n_epochs < 1 or max_images < 1 or max_mistakes < 1 or tile_size < 16 or pr_curves_max_classes < 0:
            raise ValueError(
                "every_n_epochs, max_images and max_mistakes must be positive, tile_size at least 16 and "
                "pr_curves_max_classes at least 0"
            )
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.max_mistakes = max_mistakes
        self.log_graph = log_graph
        self.tile_size = tile_size
        self.pr_curves_max_classes = pr_curves_max_classes
        self.layout = layout
        self._batch_logged = False
        self._collecting = False
        self._confmat: MulticlassConfusionMatrix | None = None
        self._confmat_kept: MulticlassConfusionMatrix | None = None
        self._pr: BinnedPRCounts | None = None
        self._pr_kept: BinnedPRCounts | None = None
        self._reliability: ReliabilityBins | None = None
        self._mistakes: list[tuple[float, torch.Tensor, int, int]] = []
        self._image_shape: tuple[int, ...] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    @staticmethod
    def _logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    @staticmethod
    def _class_names(pl_module: pl.LightningModule, n: int) -> list[str]:
        names = list(getattr(pl_module, "class_names", None) or [])
        return names if len(names) == n else [str(i) for i in range(n)]

    # --- the augmented batch and the graph ------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the first training batch of this fit; write the custom-scalars layout unless the run folder has it."""
        self._batch_logged = False
        logger = self._logger(trainer)
        if not self.layout or logger is None or not trainer.is_global_zero:
            return
        monitors_lr = any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)  # type: ignore[attr-defined]
        charts = scalar_charts(logged_metric_names(pl_module), learning_rates=monitors_lr)
        if charts:
            try:
                write_layout(logger.experiment, logger.log_dir, {str(logger.name): charts})
            except Exception as err:  # a report must never stop training
                rank_zero_warn(f"TensorBoardReports: could not write the custom-scalars layout: {err}")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Write the grid of the first training batch (and the graph) as the model receives them."""
        x, y = batch[0], batch[1]
        if self._batch_logged or len(y) == 0:  # a batch of unreadable files only holds no images
            return
        self._batch_logged = True
        if isinstance(batch, FeatureBatch):  # training on cached features: there are no images to show
            return
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        shown = to_uint8(x[: self.max_images].detach()).cpu()
        nrow = min(8, len(shown))
        writer = logger.experiment
        writer.add_image(f"{TAG}/train_batch", make_grid(shown, nrow=nrow, padding=2), trainer.global_step)
        names = list(getattr(pl_module, "class_names", None) or [])
        labels = [names[t] if t < len(names) else str(t) for t in y[: len(shown)].tolist()]
        rows = [f"row {r // nrow + 1}: " + ", ".join(labels[r : r + nrow]) for r in range(0, len(labels), nrow)]
        writer.add_text(f"{TAG}/train_batch_labels", "```\n" + "\n".join(rows) + "\n```", trainer.global_step)
        if self.log_graph:
            self._write_graph(logger, pl_module, x[:1])

    @staticmethod
    def _write_graph(logger: TensorBoardLogger, pl_module: pl.LightningModule, x: torch.Tensor) -> None:
        # Traced in eval mode: a train-mode trace would move BatchNorm statistics and consume dropout randomness.
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                logger.experiment.add_graph(pl_module, x)
        except Exception as err:  # tracing fails for some architectures; the run must go on
            rank_zero_warn(f"TensorBoardReports: could not trace the model graph: {err}")
        finally:
            pl_module.train(was_training)

    # --- validation reports ---------------------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting when this validation epoch is reported on."""
        self._collecting = (
            self._logger(trainer) is not None
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )
        self._confmat, self._pr, self._mistakes = None, None, []
        num_classes = len(getattr(pl_module, "class_names", None) or [])
        if self._collecting and num_classes:
            # made here, not at the first batch, so that a rank without batches still joins the synchronization;
            # made once and reset afterwards (building a metric costs milliseconds at every epoch transition)
            kept = self._confmat_kept
            if kept is None or kept.num_classes != num_classes or kept.device != pl_module.device:
                kept = MulticlassConfusionMatrix(num_classes, validate_args=False).to(pl_module.device)
                self._confmat_kept = kept
            kept.reset()
            self._confmat = kept
            self._pr = self._pr_counts(num_classes, pl_module.device)
            self._reliability = self._reliability_bins(pl_module.device)

    def _reliability_bins(self, device: torch.device) -> ReliabilityBins:
        """The reset confidence bins of the reliability diagram (made once, reset afterwards)."""
        bins = self._reliability
        if bins is None or bins.device != device:
            bins = ReliabilityBins().to(device)
        bins.reset()
        return bins

    def _pr_counts(self, num_classes: int, device: torch.device) -> BinnedPRCounts | None:
        """The reset PR bucket counts for ``num_classes`` (made once, reset afterwards), or ``None`` without curves."""
        n = min(num_classes, self.pr_curves_max_classes)
        if n == 0:
            return None
        pr = self._pr_kept
        if pr is None or pr.num_classes != n or pr.device != device:
            pr = BinnedPRCounts(n).to(device)
            self._pr_kept = pr
        pr.reset()
        return pr

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the confusion matrix and the running top mistakes with this batch."""
        x, y = batch[0], batch[1]
        if not self._collecting or len(y) == 0:
            return
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(x)
        if self._confmat is None:  # a module without class names: the class count is the logits' width
            self._confmat = MulticlassConfusionMatrix(logits.shape[1]).to(logits.device)
            self._pr = self._pr_counts(logits.shape[1], logits.device)
            self._reliability = self._reliability_bins(logits.device)
        # the model's probabilities: softmax(logits / T) for a calibrated model (--calibrate temperature)
        temperature = getattr(pl_module, "temperature", None)
        scaled = logits.detach().float()
        probs = (scaled / temperature if isinstance(temperature, torch.Tensor) else scaled).softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        self._confmat.update(predicted, y)
        if self._pr is not None:
            self._pr.update(probs, y)
        if self._reliability is not None:
            self._reliability.update(probs, y)
        wrong = (predicted != y).nonzero().flatten()
        if len(wrong) == 0:
            return
        top = wrong[confidence[wrong].topk(min(self.max_mistakes, len(wrong))).indices]
        if isinstance(batch, FeatureBatch):
            # cached features carry no pixels: keep the dataset index, the image is read at epoch end if it ranks
            data = data_info(getattr(trainer, "datamodule", None))
            size = int(data.image_size) if data is not None else 32
            self._image_shape = (3, size, size)
            shown: list[Any] = [int(batch.indices[i]) for i in top.tolist()]
        else:
            x = main_view(x)  # a TTA batch shows one view per image
            self._image_shape = tuple(x.shape[1:])
            shown = list(to_uint8(x[top].detach()).cpu())
        for k, i in enumerate(top.tolist()):
            self._mistakes.append((float(confidence[i]), shown[k], int(y[i]), int(predicted[i])))
        self._mistakes.sort(key=lambda m: -m[0])
        del self._mistakes[self.max_mistakes :]

    def _read_cached_images(self, trainer: pl.Trainer) -> None:
        """Replace the dataset indices kept for mistakes on cached features by the images themselves."""
        data = data_info(getattr(trainer, "datamodule", None))
        for i, (c, image, true, pred) in enumerate(self._mistakes):
            if isinstance(image, int):
                loaded = data.image_of("val", image) if data is not None else None
                if loaded is None or tuple(loaded.shape) != tuple(self._image_shape or ()):
                    loaded = torch.full(tuple(self._image_shape or (3, 32, 32)), 128, dtype=torch.uint8)
                self._mistakes[i] = (c, loaded, true, pred)

    def _gather_mistakes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple]:
        if trainer.world_size <= 1 or self._image_shape is None:
            return self._mistakes
        k = self.max_mistakes
        confidence = torch.full((k,), -1.0)
        images = torch.zeros((k, *self._image_shape), dtype=torch.uint8)
        labels = torch.zeros((k, 2), dtype=torch.long)
        for i, (c, image, true, pred) in enumerate(self._mistakes):
            confidence[i], images[i], labels[i] = c, image, torch.tensor([true, pred])
        device = pl_module.device
        gathered = [
            cast(torch.Tensor, pl_module.all_gather(t.to(device))).flatten(0, 1).cpu()  # a tensor in, a tensor out
            for t in (confidence, images, labels)
        ]  # every rank takes part: all_gather is a collective
        order = [i for i in gathered[0].argsort(descending=True).tolist() if gathered[0][i] >= 0][:k]
        return [(float(gathered[0][i]), gathered[1][i], int(gathered[2][i, 0]), int(gathered[2][i, 1])) for i in order]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the confusion matrix, per-class table, reliability diagram and top mistakes (rank zero)."""
        if not self._collecting or self._confmat is None:
            return
        self._collecting = False
        matrix = self._confmat.compute().cpu()  # every rank: compute() synchronizes across processes
        pr_counts = self._pr.compute().cpu() if self._pr is not None else None  # likewise
        bins = self._reliability.compute().cpu() if self._reliability is not None else None  # likewise
        self._read_cached_images(trainer)
        mistakes = self._gather_mistakes(trainer, pl_module)
        self._confmat, self._pr, self._mistakes = None, None, []
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        names = self._class_names(pl_module, matrix.shape[0])
        # Rendering and PNG-encoding a 100-class matrix takes a quarter of a second: done in a background thread,
        # so the next epoch starts at once (benchmarks/RESULTS.md, epoch transition).
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_transfer-reports")
        self._pending.append(
            self._executor.submit(
                self._write_reports, logger.experiment, trainer.global_step, matrix, names, mistakes, pr_counts, bins
            )
        )
        self._pending = [f for f in self._pending if not f.done()]

    def _write_reports(
        self,
        writer: Any,
        step: int,
        matrix: torch.Tensor,
        names: list[str],
        mistakes: list,
        pr_counts: torch.Tensor | None = None,
        bins: torch.Tensor | None = None,
    ) -> None:
        try:
            cm = render_confusion_matrix(matrix, names)
            writer.add_image(f"{TAG}/confusion_matrix", np.asarray(cm), step, dataformats="HWC")
            writer.add_text(f"{TAG}/top_confusions", format_top_confusions(matrix, names, TOP_CONFUSIONS), step)
            writer.add_text(f"{TAG}/per_class", format_class_table(matrix, names), step)
            if pr_counts is not None:
                self._write_pr_curves(writer, step, pr_counts.numpy(), names)
            if bins is not None and bins[0].sum() > 0:
                diagram = render_reliability_diagram(reliability(bins))
                writer.add_image(f"{TAG}/reliability_diagram", np.asarray(diagram), step, dataformats="HWC")
            if not mistakes:
                writer.add_text(f"{TAG}/top_mistakes_table", "no misclassified validation images", step)
                return
            grid = mistakes_grid(mistakes, names, self.tile_size)
            writer.add_image(f"{TAG}/top_mistakes", grid, step)
            writer.add_text(f"{TAG}/top_mistakes_table", mistakes_table(mistakes, names), step)
        except Exception as err:  # a report must never stop training
            rank_zero_warn(f"TensorBoardReports: could not write the step {step} reports: {err}")

    @staticmethod
    def _write_pr_curves(writer: Any, step: int, counts: np.ndarray, names: list[str]) -> None:
        """One PR curve per counted class (``reports/pr_curve/<class>``), from the summed bucket counts."""
        for c in range(counts.shape[1]):
            d = pr_curve_data(counts[0, c], counts[1, c])
            writer.add_pr_curve_raw(
                f"{TAG}/pr_curve/{names[c]}",
                d["tp"],
                d["fp"],
                d["tn"],
                d["fn"],
                d["precision"],
                d["recall"],
                step,
                num_thresholds=counts.shape[2],
            )

    def wait(self) -> None:
        """Block until the reports queued so far are written."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Finish writing the queued reports before the logger is closed."""
        self.teardown(trainer, pl_module, "")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Finish writing the queued reports before the run ends."""
        self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
