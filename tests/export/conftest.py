"""Session fixtures: a checkpoint trained once through the CLI (smallcnn), and resnet18 and RotNet checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_checkpoints import Trained, fit, lightning_style_checkpoint


@pytest.fixture(scope="session")
def smallcnn(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """smallcnn trained one epoch on three colour classes at 32 px by ``lit_transfer fit``."""
    return fit(tmp_path_factory.mktemp("smallcnn"), "smallcnn", "small")


@pytest.fixture(scope="session")
def resnet18_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 at 32 px: moved BatchNorm statistics, dataset mean/std, ImageNet weights named in its hparams."""
    from lit_transfer.models import TransferClassifier

    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, class_names=["a", "b", "c"], backbone="resnet18")
    with torch.no_grad():
        model.train()(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))  # running stats as after a step
        model.mean.copy_(torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1))  # as `normalize: dataset` sets them
        model.std.copy_(torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
    model.hparams.weights = "IMAGENET1K_V1"  # trained from ImageNet weights: export must not fetch them again
    return lightning_style_checkpoint(model, tmp_path_factory.mktemp("resnet18") / "resnet18.ckpt", image_size=32)


@pytest.fixture(scope="session")
def rotnet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RotNetClassifier checkpoint with 8 rotations by 45°, without training."""
    rotnet = pytest.importorskip("lit_transfer.models.rotnet")
    from lit_transfer.data.rotnet import rotation_class_names

    torch.manual_seed(0)
    model = rotnet.RotNetClassifier(num_classes=8, class_names=rotation_class_names(8), backbone="smallcnn")
    return lightning_style_checkpoint(model, tmp_path_factory.mktemp("rotnet") / "rotnet.ckpt", image_size=32)
