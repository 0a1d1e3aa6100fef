"""Trained checkpoints for the export tests: a colour image tree and one short fit through the real CLI.

The tree is written here rather than with ``tests/conftest.py``'s ``make_tree``: that module cannot be imported by
name (``import conftest`` may find ``tests/caltech/conftest.py``), and its ``image_tree`` fixture is function-scoped,
which would mean one fit per test instead of one per session.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("blue", "green", "red")
CHANNEL = {"red": 0, "green": 1, "blue": 2}


@dataclass
class Trained:
    """A fitted checkpoint and the tree it was trained on."""

    ckpt: Path
    root: Path
    images: list[Path]


def write_colour_tree(root: Path, per_class: int = 8, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """``root/<colour>/img_NNN.png``: noisy images dominated by their class's colour channel."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size[0], size[1], 3), dtype=np.uint8)
            pixels[..., CHANNEL[name]] += 150
            path = root / name / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def fit(workdir: Path, backbone: str, experiment: str, *extra: str) -> Trained:
    """One epoch of TransferClassifier at 32 px on a colour tree via ``lit_transfer fit``, run in ``workdir``."""
    from lit_transfer.cli import main

    root = write_colour_tree(workdir / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["lit_transfer"])  # pytest's own arguments must not reach LightningCLI
        main(
            [
                "fit", "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
                "--data.num_workers", "0", "--data.batch_size", "8", "--model", "TransferClassifier",
                "--model.backbone", backbone, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--experiment", experiment, *extra,
            ]
        )  # fmt: skip
    ckpt = workdir / "runs" / experiment / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return Trained(ckpt, root, sorted(root.rglob("*.png")))


def lightning_style_checkpoint(model: Any, path: Path, image_size: int, epoch: int = 3) -> Path:
    """Save ``model`` the way ``lit_transfer fit`` does (hyperparameters with ``_class_path``, ``lit_transfer``)."""
    cls = type(model)
    torch.save(
        {
            "epoch": epoch,
            "state_dict": model.state_dict(),
            "hyper_parameters": {"_class_path": f"{cls.__module__}.{cls.__qualname__}", **dict(model.hparams)},
            "lit_transfer": {
                "class_names": list(model.class_names),
                "mean": model.mean.flatten().tolist(),
                "std": model.std.flatten().tolist(),
                "image_size": image_size,
                "manifest_hash": "0123456789abcdef",
            },
        },
        path,
    )
    return path
