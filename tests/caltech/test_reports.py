"""TensorBoardReports: the tags a tiny fit writes, bounded top mistakes, per-class metrics, no logger no work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from lit_transfer.callbacks.reports import TensorBoardReports, class_metrics, render_confusion_matrix
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.models import TransferClassifier

NAMES = ["blue", "green", "red"]


def _fit(root: Path, log_dir: Path, callback: TensorBoardReports, model: TransferClassifier | None = None, **kw: Any):
    pl.seed_everything(0)
    model = model or TransferClassifier(num_classes=3, class_names=NAMES, backbone="smallcnn")
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    trainer = pl.Trainer(
        max_epochs=kw.pop("max_epochs", 1),
        accelerator="cpu",
        logger=kw.pop("logger", TensorBoardLogger(str(log_dir), name="reports")),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, *kw.pop("extra_callbacks", [])],
        **kw,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, model


def test_fit_writes_the_report_tags(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    # colourless classes: a one-epoch model cannot separate them, so there are mistakes to show
    root = tree_factory("data", per_class=6, classes=("c0", "c1", "c2"))
    trainer, _ = _fit(root, tmp_path, TensorBoardReports(log_graph=True))
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"reports/train_batch", "reports/confusion_matrix", "reports/top_mistakes"} <= images
    texts = {t.removesuffix("/text_summary") for t in events.Tags()["tensors"]}
    assert {"reports/per_class", "reports/top_mistakes_table", "reports/train_batch_labels"} <= texts
    assert events.Tags()["graph"]
    grid = events.Images("reports/train_batch")
    assert len(grid) == 1  # once per fit, not per batch
    assert len(events.Images("reports/confusion_matrix")) == 1  # the sanity check is not reported
    table = events.Tensors("reports/per_class/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| blue |" in table and "macro average" in table


def test_logits_from_the_step_output_save_a_forward_pass(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    class ReturnsLogits(TransferClassifier):
        eval_forwards = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                type(self).eval_forwards += 1
            return super().forward(x)

    root = tree_factory("data", per_class=8)
    model = ReturnsLogits(num_classes=3, class_names=NAMES, backbone="smallcnn")
    trainer, _ = _fit(root, tmp_path, TensorBoardReports(), model=model, num_sanity_val_steps=0)
    assert ReturnsLogits.eval_forwards == trainer.num_val_batches[0]  # one forward per batch, not two


def test_without_tensorboard_logger_nothing_happens(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    callback = TensorBoardReports()
    _fit(tree_factory("data", per_class=4), tmp_path, callback, logger=CSVLogger(str(tmp_path)))
    assert callback._confmat is None and callback._mistakes == []
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_top_mistakes_are_bounded_and_the_most_confident(tmp_path: Path) -> None:
    callback = TensorBoardReports(max_mistakes=5)
    trainer = SimpleNamespace(
        loggers=[TensorBoardLogger(str(tmp_path))], sanity_checking=False, current_epoch=0, world_size=1
    )
    callback.on_validation_epoch_start(trainer, None)
    generator = torch.Generator().manual_seed(0)
    wrong_confidences = []
    for b in range(6):
        x = torch.full((8, 3, 4, 4), b, dtype=torch.uint8)
        y = torch.randint(0, 4, (8,), generator=generator)
        logits = torch.randn(8, 4, generator=generator) * 3
        probs = logits.softmax(dim=1)
        wrong_confidences += probs.max(dim=1).values[probs.argmax(dim=1) != y].tolist()
        callback.on_validation_batch_end(trainer, None, {"logits": logits}, (x, y), b)
        assert len(callback._mistakes) <= 5
    kept = [m[0] for m in callback._mistakes]
    assert kept == pytest.approx(sorted(wrong_confidences, reverse=True)[:5])
    assert all(image.device.type == "cpu" and image.dtype == torch.uint8 for _, image, _, _ in callback._mistakes)
    assert all(t != p for _, _, t, p in callback._mistakes)


def test_class_metrics_match_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(1)
    preds, target = torch.randint(0, 5, (200,), generator=generator), torch.randint(0, 4, (200,), generator=generator)
    matrix = torch.zeros(5, 5, dtype=torch.long)
    matrix.index_put_((target, preds), torch.ones(200, dtype=torch.long), accumulate=True)
    ours = class_metrics(matrix)
    kwargs = {"num_classes": 5, "average": None, "zero_division": 0}
    for key, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score)):
        assert torch.allclose(ours[key].float(), metric(**kwargs)(preds, target), atol=1e-6), key
    assert ours["support"].tolist() == torch.bincount(target, minlength=5).tolist()


@pytest.mark.parametrize("n", [3, 120])
def test_confusion_matrix_image(n: int) -> None:
    matrix = torch.eye(n, dtype=torch.long) * 5 + 1
    image = render_confusion_matrix(matrix, [f"class_{i}" for i in range(n)])
    assert image.mode == "RGB" and 100 < image.size[0] < 1200 and 100 < image.size[1] < 1200


def test_reports_are_drawn_in_the_background_and_written_before_fit_returns(
    tree_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import lit_transfer.callbacks.reports as reports

    next_epoch_started = threading.Event()
    seen: list[tuple[bool, bool]] = []  # (drawn on the main thread, training had gone on meanwhile)
    render = reports.render_confusion_matrix

    def render_after_the_next_epoch_starts(*args: Any, **kwargs: Any) -> Any:
        # on the main thread this wait could only end by its timeout: training is what sets the event
        went_on = next_epoch_started.wait(timeout=30)
        seen.append((threading.current_thread() is threading.main_thread(), went_on))
        return render(*args, **kwargs)

    class EpochSignal(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                next_epoch_started.set()

    monkeypatch.setattr(reports, "render_confusion_matrix", render_after_the_next_epoch_starts)
    root = tree_factory("data", per_class=6, classes=("c0", "c1", "c2"))
    trainer, _ = _fit(root, tmp_path, TensorBoardReports(), max_epochs=2, extra_callbacks=[EpochSignal()])
    assert seen == [(False, True), (False, True)]  # epoch 0's report was drawn while epoch 1 trained
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("reports/confusion_matrix")) == 2  # and both were written by the time fit returned
