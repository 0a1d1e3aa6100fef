"""Helpers for the user's-path tests: the real ``python -m lit_transfer`` in a subprocess, with the user's defaults.

Progress bar on, loader workers (2, persistent: the default is one per core, and CI has two), augmentation on and a
BatchNorm backbone where the point is training. Only sizes are made small (32 px, tiny trees, 1-3 epochs), never a
default switched off. Imported by the tests of this folder as a sibling module (``from userpath import ...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

USER_DEFAULTS = ("--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "2")


def user_args(
    root: Path, *extra: str, epochs: int = 2, experiment: str = "user", backbone: str = "resnet18"
) -> list[str]:
    """A folder fit as a user writes it: only the data path, sizes and the experiment name are given."""
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        *USER_DEFAULTS,
        "--model", "TransferClassifier",
        "--model.backbone", backbone,
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--experiment", experiment,
        *extra,
    ]  # fmt: skip


def write_tree(root: Path, per_class: int = 8, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """``root/{red,green,blue}/img_NNN.png``: noisy 40x48 images whose dominant channel is the class (as
    ``tests/conftest.py``'s ``make_tree``, for module-scoped fixtures, which cannot use its function-scoped ones)."""
    rng = np.random.default_rng(seed)
    for channel, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(root / name / f"img_{i:03d}.png")
    return root


def lit_command(*args: str) -> list[str]:
    """The command line of ``python -m lit_transfer ARGS`` with this interpreter."""
    return [sys.executable, "-m", "lit_transfer", *args]


def lit(*args: str, cwd: Path, timeout: float = 300, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``python -m lit_transfer ARGS`` in ``cwd``; with ``check`` a non-zero exit fails the test with its stderr."""
    result = subprocess.run(
        lit_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run folder's TensorBoard events: ``tag -> [(step, value), …]``."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)
