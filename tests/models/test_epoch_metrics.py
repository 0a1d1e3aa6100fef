"""Epoch metrics: buffered updates give exactly the per-sample figures, whatever the batch sizes."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier
from lit_transfer.models.classifier import METRIC_FLUSH_BATCHES


def test_epoch_loss_and_accuracy_are_per_sample_over_unequal_batches(tree_factory, tmp_path: Path) -> None:
    # 3 classes x 9 images, 30 % validation: 9 validation images in batches of 2, so the last batch holds 1, and
    # more batches than one metric flush holds
    root = tree_factory("data", per_class=9)
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, val_fraction=0.3)
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    images = torch.stack([data._datasets["val"][i][0] for i in range(len(data._datasets["val"]))])
    labels = torch.tensor(data._datasets["val"].targets)
    assert len(labels) % 2 == 1 and len(labels) // 2 + 1 <= 2 * METRIC_FLUSH_BATCHES
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert abs(metrics["val_loss"] - F.cross_entropy(logits, labels).item()) < 1e-5
    assert abs(metrics["val_acc"] - (logits.argmax(1) == labels).float().mean().item()) < 1e-6


def test_flushes_every_few_batches_and_at_epoch_end(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=30)
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=1, num_workers=0, val_fraction=0.5)
    model = TransferClassifier(num_classes=3, backbone="smallcnn")
    updates: list[int] = []
    collection = model.metrics["val_metrics"]
    original = collection.update

    def counting(preds: torch.Tensor, target: torch.Tensor) -> None:
        updates.append(len(target))
        original(preds, target)

    collection.update = counting  # type: ignore[method-assign]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule=data, verbose=False)
    total = len(data._datasets["val"])
    assert sum(updates) == total and len(updates) == -(-total // METRIC_FLUSH_BATCHES)
    assert all(n == METRIC_FLUSH_BATCHES for n in updates[:-1])


def test_metrics_stay_separate_when_the_first_update_is_all_correct() -> None:
    """A first update that is right at top-1 must not tie macro F1 to top-5 accuracy for the rest of the epoch."""
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    model = TransferClassifier(num_classes=6, backbone="smallcnn")
    collection = model.metrics["val_metrics"]
    generator = torch.Generator().manual_seed(0)
    first_y = torch.arange(6)
    first = F.one_hot(first_y, 6).float() * 5  # all correct: top-1 and top-5 agree
    later_y = torch.randint(0, 6, (40,), generator=generator)
    later = torch.randn(40, 6, generator=generator)
    collection.update(first, first_y)
    collection.update(later, later_y)
    logged = {k: v.item() for k, v in collection.compute().items()}
    logits, labels = torch.cat([first, later]).numpy(), torch.cat([first_y, later_y]).numpy()
    assert logged["val_f1"] == pytest.approx(f1_score(labels, logits.argmax(1), average="macro"), abs=1e-6)
    assert logged["val_acc"] == pytest.approx(accuracy_score(labels, logits.argmax(1)), abs=1e-6)
    assert logged["val_acc_top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5), abs=1e-6)


@pytest.mark.parametrize("num_classes", [3, 12])
def test_classification_counts_equal_torchmetrics_and_scikit_learn(num_classes: int) -> None:
    from sklearn.metrics import f1_score, top_k_accuracy_score
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from lit_transfer.models.metrics import ClassificationCounts

    generator = torch.Generator().manual_seed(num_classes)
    counts = ClassificationCounts(num_classes, top_k=5 if num_classes > 5 else 0)
    reference = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 5:
        reference["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    batches = []
    for size in (7, 64, 1):
        logits = torch.randn(size, num_classes, generator=generator)
        labels = torch.randint(0, num_classes - 1, (size,), generator=generator)  # the last class never occurs
        logits[:, -1] -= 10 if size == 64 else 0  # ... and is rarely predicted
        batches.append((logits, labels))
        counts.update(logits, labels)
        for metric in reference.values():
            metric.update(logits, labels)
    got = {k: v.item() for k, v in counts.compute().items()}
    assert got.keys() == reference.keys()
    for key, metric in reference.items():
        assert got[key] == pytest.approx(metric.compute().item(), abs=1e-6), key
    logits = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    assert got["f1"] == pytest.approx(f1_score(labels, logits.argmax(1), average="macro"), abs=1e-6)
    if num_classes > 5:
        assert got["acc_top5"] == pytest.approx(
            top_k_accuracy_score(labels, logits, k=5, labels=range(num_classes)), abs=1e-6
        )
