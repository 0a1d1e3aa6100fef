"""``class_weights: auto`` with RotNet: the weights come from the rotation labels trained on, not from the source
images (all labelled 0, which gave weights ``[1, 0, …, 0]``, a zero loss and a model stuck at 0°)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_transfer.cli import main
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.data.rotnet import RotNetDataModule


def gradient_photos(root: Path, count: int = 24, seed: int = 0) -> Path:
    """Noisy photos bright at the top and dark at the bottom: their rotation is easy to read."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    y = np.linspace(0, 1, 40)[:, None, None]
    for i in range(count):
        pixels = 220 * (1 - y) ** 2 + 20 + rng.normal(0, 25, (40, 48, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"p{i:02d}.png")
    return root


@pytest.mark.parametrize(
    ("all_rotations", "angle_mode", "num_rotations"),
    [(False, "discrete", 8), (True, "discrete", 8), (False, "binned", 8), (True, "binned", 4)],
)
def test_train_targets_are_the_rotations(
    unlabeled: Path, all_rotations: bool, angle_mode: str, num_rotations: int
) -> None:
    dm = RotNetDataModule(
        root=str(unlabeled), image_size=32, num_workers=0, val_fraction=0.3, batch_size=8,
        all_rotations=all_rotations, angle_mode=angle_mode, num_rotations=num_rotations,  # type: ignore[arg-type]
    )  # fmt: skip
    dm.setup("fit")
    images = sum(1 for s in dm.samples if s.split == "train")
    counts = Counter(dm.train_targets())
    assert images == len(dm._datasets["train"].images) > 0
    assert counts == dict.fromkeys(range(num_rotations), images)  # uniform, every class
    if all_rotations:  # exactly the labels of an epoch's training views
        labels = [dm._datasets["train"][i][1] for i in range(len(dm._datasets["train"]))]
        assert Counter(labels) == counts


def test_image_folder_train_targets_are_the_sample_labels(image_tree: Path) -> None:
    dm = ImageFolderDataModule(root=str(image_tree), image_size=32, num_workers=0)
    dm.setup("fit")
    assert dm.train_targets() == [s.label for s in dm.samples if s.split == "train"]
    assert set(dm.train_targets()) == {0, 1, 2}


def test_rotnet_fit_with_auto_class_weights_learns(tmp_path: Path, in_tmp: Path) -> None:
    photos = gradient_photos(tmp_path / "photos")
    main([
        "fit", "--data", "lit_transfer.data.rotnet.RotNetDataModule", "--data.root", str(photos),
        "--data.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0", "--data.val_fraction", "0.25",
        "--model", "lit_transfer.models.rotnet.RotNetClassifier", "--model.backbone", "smallcnn",
        "--model.class_weights", "auto", "--trainer.max_epochs", "4", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--experiment", "cw",
    ])  # fmt: skip
    run = in_tmp / "runs" / "cw" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["class_weight"], torch.ones(8))  # uniform: every rotation is as common
    events = EventAccumulator(str(run))
    events.Reload()
    losses = [e.value for e in events.Scalars("train_loss")]
    accuracy = [e.value for e in events.Scalars("val_acc")]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0.05 for v in losses), losses  # neither NaN nor 0
    assert losses[-1] < losses[0]
    assert max(accuracy) >= 0.5, accuracy  # chance is 0.125 (measured: 0.75 after 4 epochs)
