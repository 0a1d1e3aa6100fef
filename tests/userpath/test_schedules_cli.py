"""The user's path: a max_steps run with warm-up + cosine logs the learning rates the schedule defines."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from userpath import lit, scalars, user_args


def test_max_steps_warmup_cosine_lr_in_tensorboard(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=8)  # 3 classes x 8, 20 % validation: 18 training images
    steps, warmup_epochs, lr, factor = 24, 1.4, 0.1, 0.1
    result = lit(
        "fit",
        *user_args(root, "--trainer.max_steps", str(steps), "--model.init_args.warmup_epochs", str(warmup_epochs),
                   "--model.init_args.cosine", "true", "--model.init_args.backbone_lr_factor", str(factor),
                   "--optimizer", "SGD", "--optimizer.lr", str(lr),
                   epochs=-1, experiment="sched", backbone="smallcnn"),
        cwd=tmp_path,
    )  # fmt: skip
    run = tmp_path / "runs" / "sched" / "version_0"
    with open(run / "split_manifest.csv", newline="") as f:
        train = sum(1 for row in csv.DictReader(f) if row["split"] == "train")
    per_epoch = math.ceil(train / 4)  # batch size 4, no accumulation
    warmup = round(warmup_epochs * per_epoch)
    assert per_epoch == 5 and warmup == 7

    def want(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    logged = scalars(run)
    # LearningRateMonitor logs at each epoch start, at the optimizer step the epoch begins with
    for tag, base in (("lr-SGD/head", lr), ("lr-SGD/backbone", lr * factor)):
        values = logged[tag]
        assert [s for s, _ in values] == list(range(0, steps, per_epoch)), tag
        for step, value in values:
            assert value == pytest.approx(base * want(step), rel=1e-5), (tag, step)
    # the cosine part is reached: well past the peak, the lr is low again
    assert logged["lr-SGD/head"][-1][1] < 0.2 * lr
    assert f"{warmup} linear warm-up steps" in result.stderr and f"{steps} optimizer steps in all" in result.stderr
