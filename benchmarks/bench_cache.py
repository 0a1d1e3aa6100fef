"""Benchmark of the feature cache (issue row 5): E epochs recomputing frozen features vs one extraction + E cached.

Run through the driver: ``python benchmarks/run.py [--quick] --only cache``. Same protocol as every other section:
the two variants are interleaved, round 0 is discarded, the figure is the median of the per-round figures.

Figure: [time of E epochs recomputing features] ÷ [one extraction pass + E epochs on the cache] ÷ E, with E = 10
and ResNet18 frozen (``freeze: backbone``) on real JPEGs through ``ImageFolderDataModule`` (``augmentation: none``).
Its limit is 1.0 (the cached epochs cost nothing); the goal is >= 0.9. Each cached round starts from an empty cache
folder, so the extraction pass is always inside the timing, which runs from fit start (model and data set up) to the
end of the last epoch. The head weights of both variants after training are compared (goal: max abs difference
<= 1e-5).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from run import _cmd, make_jpegs, temp_dir

from lit_transfer.callbacks import FeatureCache
from lit_transfer.callbacks.reproducibility import EpochSeeder
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.models import TransferClassifier

EPOCHS = 10


class _Span(pl.Callback):
    """Wall time from fit start (model and data set up) to the end of the last training epoch.

    In the cached variant the extraction pass happens inside this span (when the training loader is built), so the
    span is exactly "one extraction pass + E epochs"; in the other it is "E epochs". Trainer construction and the
    folder scan, the same in both, stay outside.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock."""
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the clock."""
        self.seconds = time.perf_counter() - self.start


def _fit(root: Path, image_size: int, batch: int, workers: int, cache: Path | None) -> tuple[float, dict]:
    """Train the head of a frozen ResNet18 for ``EPOCHS`` epochs; returns (seconds of the span, head weights)."""
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=8, backbone="resnet18", freeze="backbone")
    data = ImageFolderDataModule(
        root=str(root), image_size=image_size, batch_size=batch, num_workers=workers, augmentation="none",
        val_fraction=0.0,
    )  # fmt: skip
    span = _Span()
    cached = FeatureCache(enabled=cache is not None, dir=str(cache or "."))
    callbacks: list[pl.Callback] = [span, EpochSeeder(0), cached]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)  # every cached round pays for its extraction pass
    with torch.no_grad():  # warm-up discarded: the first forward passes of a process set up kernels and memory
        model.eval()
        for _ in range(2):
            model.forward_features(torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8))
    pl.seed_everything(0, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, datamodule=data)
    return span.seconds, {k: v.detach().clone() for k, v in model.head.state_dict().items()}


def bench_feature_cache(quick: bool) -> list[dict[str, Any]]:
    """Recompute vs cache, interleaved; the figure is (recompute time ÷ cached time) ÷ E per round."""
    # --quick: small 64 px inputs, so a round takes ~45 s; the full run: the default 224 px (~2.5 min a round)
    image_size, batch, classes = (64, 64, 8) if quick else (224, 32, 8)
    per_class = 128 if quick else 32
    rounds = 3
    root = Path(temp_dir("lt-bench-cache-"))
    for c in range(classes):
        (root / f"class_{c}").mkdir()
        make_jpegs(root / f"class_{c}", per_class, 160, 120)
    cache = root.parent / f"{root.name}-features"
    times: dict[str, list[float]] = {"recompute": [], "cached": []}
    heads: dict[str, dict] = {}
    for r in range(rounds + 1):
        order = ["recompute", "cached"] if r % 2 == 0 else ["cached", "recompute"]
        for name in order:
            elapsed, heads[name] = _fit(root, image_size, batch, 2, cache if name == "cached" else None)
            if r > 0:
                times[name].append(elapsed)
    shutil.rmtree(cache, ignore_errors=True)
    figures = [a / b / EPOCHS for a, b in zip(times["recompute"], times["cached"], strict=True)]
    diff = max((heads["cached"][k] - v).abs().max().item() for k, v in heads["recompute"].items())
    images = classes * per_class
    figure = statistics.median(figures)
    return [
        {
            "section": "5. feature cache",
            "row": (
                f"({EPOCHS} epochs recomputing) / (extraction + {EPOCHS} cached epochs) / {EPOCHS}, ResNet18 frozen, "
                f"{images} JPEGs at {image_size}px, batch {batch}"
            ),
            "ratio": figure,
            "ratios": [round(x, 4) for x in figures],
            "rate": EPOCHS * images / statistics.median(times["cached"]),
            "base_rate": EPOCHS * images / statistics.median(times["recompute"]),
            "goal": ">= 0.9",
            "goal_met": figure >= 0.9,
            "head_max_abs_diff": diff,
            "head_goal_met": diff <= 1e-5,
            "command": _cmd("cache", quick),
        }
    ]
