"""Logged metrics after a resume equal scikit-learn's on the checkpoint's own predictions; no noise on stderr."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score
from userpath import lit, scalars, user_args

SIX = ("red", "green", "blue", "cyan", "magenta", "yellow")  # more than 5 classes: top-5 accuracy is logged too
NOISE = ("💡 Tip", "LeafSpec", "log_every_n_steps", "sync_dist=True", "configure_callbacks")


def test_logged_metrics_after_resume_match_sklearn(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6, classes=SIX)
    lit("fit", *user_args(root, epochs=1, experiment="m"), cwd=tmp_path)
    resumed = lit("fit", *user_args(root, epochs=2, experiment="m"), "--ckpt_path", "last", cwd=tmp_path)
    for text in NOISE:
        assert text not in resumed.stderr + resumed.stdout, text
    run = tmp_path / "runs/m/version_0"
    logged = {tag: values[-1][1] for tag, values in scalars(run).items()}
    # the checkpoint's own predictions on the validation images
    with open(run / "split_manifest.csv") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    val_dir = tmp_path / "val_images"
    for row in val:
        (val_dir / row["class"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / row["path"], val_dir / row["class"] / Path(row["path"]).name)
    lit("predict", *user_args(root, experiment="m"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
        "--data.predict_dir", str(val_dir), cwd=tmp_path)  # fmt: skip
    with open(run / "predict_0/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(val)
    truth = [Path(r["path"]).parent.name for r in rows]
    predicted = [r["prediction"] for r in rows]
    top5 = [[r[f"top{k}"] for k in range(1, 6)] for r in rows]
    assert logged["val_acc"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    assert logged["val_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    in_top5 = [t in k for t, k in zip(truth, top5, strict=True)]
    assert logged["val_acc_top5"] == pytest.approx(sum(in_top5) / len(rows), abs=1e-6)
    # validate on the same checkpoint in a new process logs the same figures
    lit("validate", *user_args(root, experiment="m"), "--ckpt_path", "last", cwd=tmp_path)
    again = {tag: values[-1][1] for tag, values in scalars(run / "validate_0").items()}
    for key in ("val_acc", "val_f1", "val_acc_top5", "val_loss"):
        assert again[key] == pytest.approx(logged[key], abs=1e-6), key
