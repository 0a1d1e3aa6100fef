"""Fused steps on the user's path: the real CLI in a subprocess, progress bar on, the user's loader settings."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from userpath import lit, scalars, user_args, write_tree


def test_a_fused_linear_probe_trains_every_batch_and_logs_as_usual(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", per_class=12)  # 36 images: 22 train (6 batches of 4, the last of 2)
    probe = ("--model.freeze", "backbone", "--data.augmentation", "none", "--model.warmup_epochs", "1",
             "--model.cosine", "true", "--cache_features.fused_steps", "4")  # fmt: skip
    result = lit("fit", *user_args(root, *probe, backbone="smallcnn"), cwd=tmp_path)
    assert "4 training batches per Lightning step (fused_steps)" in result.stderr
    run = tmp_path / "runs" / "user" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    with open(run / "split_manifest.csv") as f:
        train = sum(1 for row in csv.DictReader(f) if row["split"] == "train")
    assert checkpoint["global_step"] == 2 * -(-train // 4)  # every batch of both epochs was one optimizer step
    logged = scalars(run)
    assert len(logged["train_loss"]) == 2 and len(logged["val_acc"]) == 2
