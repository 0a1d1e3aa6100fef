"""RotNetClassifier: circular angle error, parity and confusion metrics, RotNet predictions, and the pretext →
downstream transfer of a RotNet checkpoint's backbone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier
from lit_transfer.models.rotnet import (
    CircularAngleError,
    RotationConfusion,
    RotNetClassifier,
    circular_angle_error,
    class_angles,
    parity_accuracy,
)


def rotnet_args(root: Path, *extra: str, backbone: str = "smallcnn", epochs: int = 1) -> list[str]:
    return [
        "--data", "lit_transfer.data.rotnet.RotNetDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "16",
        "--data.num_workers", "0",
        "--data.val_fraction", "0.3",
        "--model", "lit_transfer.models.rotnet.RotNetClassifier",
        "--model.backbone", backbone,
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "rot",
        *extra,
    ]  # fmt: skip


def test_circular_error_folds_at_the_wrap_around() -> None:
    predicted = torch.tensor([350.0, 10.0, 0.0, 90.0, 45.0, 359.0])
    true = torch.tensor([10.0, 350.0, 180.0, 450.0, 315.0, 0.0])
    assert circular_angle_error(predicted, true).tolist() == pytest.approx([20, 20, 180, 0, 90, 1])


def test_angle_error_metric_uses_degrees_not_class_indices() -> None:
    angles = class_angles([f"{45 * k}°" for k in range(8)])
    mean, median = CircularAngleError(angles, "mean"), CircularAngleError(angles, "median")
    predicted = torch.tensor([7, 0, 1, 4, 2])  # 315°, 0°, 45°, 180°, 90°
    true = torch.tensor([0, 0, 1, 0, 3])  # errors 45°, 0°, 0°, 180°, 45°
    for metric in (mean, median):
        metric.update(predicted, true)
    assert mean.compute() == pytest.approx(54.0) and median.compute() == pytest.approx(45.0)
    # logits work too, and binned classes are measured against their bins' centres
    binned = CircularAngleError(class_angles([f"{45 * k + 22.5:g}°" for k in range(8)]))
    binned.update(torch.eye(8)[[7]], torch.tensor([0]))  # bin [315°, 360°) against bin [0°, 45°)
    assert binned.compute() == pytest.approx(45.0)
    assert class_angles(["cat", "dog"]) == [0.0, 180.0]


def test_parity_accuracy_from_the_confusion_matrix() -> None:
    confusion = RotationConfusion(8)
    confusion.update(torch.tensor([0, 2, 1, 3, 1]), torch.tensor([0, 0, 1, 1, 0]))
    assert confusion.compute() == pytest.approx(4 / 5)
    assert confusion.matrix is not None and int(confusion.matrix.sum()) == 5 and int(confusion.matrix[0, 2]) == 1
    assert parity_accuracy(torch.eye(4)) == 1.0


def test_fit_logs_angle_metrics_and_predict_writes_angles(unlabeled: Path, in_tmp: Path) -> None:
    main(["fit", *rotnet_args(unlabeled, epochs=2)])
    run = in_tmp / "runs" / "rot" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for stage in ("train", "val"):
        assert {f"{stage}_angle_error", f"{stage}_angle_error_median", f"{stage}_parity_acc", f"{stage}_acc"} <= tags
    assert "confusion_val" in {t.split("/")[0] for t in events.Tags()["tensors"]}
    errors = [e.value for e in events.Scalars("val_angle_error")]
    assert all(0 <= e <= 180 for e in errors)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"][:3] == ["0°", "45°", "90°"]
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"] if "." in k}
    assert prefixes == {"backbone", "head"}  # TransferClassifier's names; the angle metrics store nothing

    photos = unlabeled / "sub"
    main(["predict", *rotnet_args(unlabeled), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--data.predict_dir", str(photos)])  # fmt: skip
    with open(run / "predict_0" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "angle", "confidence", *(f"p_{45 * k}" for k in range(8))]
    assert [Path(r["path"]).name for r in rows] == [f"img_{i:03d}.png" for i in (1, 3, 5, 7, 9)]
    for row in rows:
        probs = [float(row[f"p_{45 * k}"]) for k in range(8)]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and float(row["confidence"]) == max(probs)
        assert float(row["angle"]) == 45 * probs.index(max(probs))


@pytest.mark.parametrize("downstream", ["ImageFolderDataModule", "lit_transfer.data.caltech101.Caltech101DataModule"])
def test_rotnet_checkpoint_is_a_backbone_for_downstream_classifiers(
    downstream: str, unlabeled: Path, image_tree: Path, in_tmp: Path
) -> None:
    main(["fit", *rotnet_args(unlabeled, backbone="resnet18")])
    pretext = in_tmp / "runs" / "rot" / "version_0" / "checkpoints" / "last.ckpt"
    pretext_state = torch.load(pretext, weights_only=True)["state_dict"]
    # a linear probe: the RotNet backbone, frozen, under a new 3-class head
    main([
        "fit", "--data", downstream, "--data.root", str(image_tree), "--data.image_size", "32",
        "--data.batch_size", "8", "--data.num_workers", "0",
        "--model", "TransferClassifier", "--model.backbone", "resnet18", "--model.weights", str(pretext),
        "--model.freeze", "backbone", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--experiment", "probe",
    ])  # fmt: skip
    probe = torch.load(in_tmp / "runs" / "probe" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    backbone = {k: v for k, v in pretext_state.items() if k.startswith("backbone.")}
    assert backbone and {k for k in probe["state_dict"] if k.startswith("backbone.")} == set(backbone)
    for key, tensor in backbone.items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(probe["state_dict"][key], tensor), key
    assert probe["state_dict"]["head.0.weight"].shape == (3, 512)  # the rotation head was dropped
    assert pretext_state["head.0.weight"].shape == (8, 512)
    # and straight from Python, without freezing: the backbone loads, the head is new
    model = TransferClassifier(num_classes=5, backbone="resnet18", weights=str(pretext))
    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, backbone[f"backbone.{key}"])
    assert isinstance(RotNetClassifier(num_classes=8, backbone="smallcnn"), TransferClassifier)
