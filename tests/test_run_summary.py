"""RunSummary: one TensorBoard HParams session per run folder (kept current on resume) and run_summary.json."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.api_pb2 import Status
from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG, SESSION_END_INFO_TAG, SESSION_START_INFO_TAG
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_cli import run_dir, tiny_args
from test_projector import projector, val_classes

from lit_transfer.callbacks.run_summary import HPARAMS_PREFIX, METRIC_TAGS, SUMMARY_NAME
from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier

HPARAM_KEYS = {
    "model", "backbone", "weights", "freeze", "unfreeze", "optimizer", "lr", "backbone_lr_factor", "scheduler",
    "batch_size", "accumulate_grad_batches", "global_batch_size", "image_size", "augmentation", "max_epochs",
    "max_steps", "precision", "devices", "num_nodes", "world_size", "seed", "data", "data_root", "monitor",
}  # fmt: skip


def session(run: Path) -> dict[str, Any]:
    """The HParams plugin data TensorBoard reads for ``run``: hparams, experiment columns, end status, metrics."""
    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content[SESSION_START_INFO_TAG]).session_start_info
    experiment = HParamsPluginData.FromString(content[EXPERIMENT_TAG]).experiment
    end = content.get(SESSION_END_INFO_TAG)
    tags = set(events.Tags()["scalars"])
    return {
        "hparams": {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()},
        "columns": {h.name for h in experiment.hparam_infos},
        "metrics": {m.name.tag for m in experiment.metric_infos},
        "status": HParamsPluginData.FromString(end).session_end_info.status if end else None,
        "scalars": {tag: events.Scalars(tag)[-1].value for tag in METRIC_TAGS.values() if tag in tags},
    }


def hparams_in_lightning_files(run: Path) -> list[str]:
    """Lightning's own event files that hold HParams data (there must be none: the session has its own file)."""
    found = []
    for path in run.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path))
        events.Reload()
        if _has(events):
            found.append(path.name)
    return found


def _has(events: EventAccumulator) -> bool:
    try:
        return bool(events.PluginTagToContent("hparams"))
    except KeyError:
        return False


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / SUMMARY_NAME).read_text())


def train_images(run: Path) -> int:
    with open(run / "split_manifest.csv") as f:
        return sum(row["split"] == "train" for row in csv.DictReader(f))


def test_fit_registers_one_hparams_session_and_its_metrics(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, "--test_after_fit", "true", "--model.freeze", "1", epochs=2)])
    run = run_dir(in_tmp)
    found = session(run)
    assert set(found["hparams"]) == HPARAM_KEYS == found["columns"]
    assert found["metrics"] == set(METRIC_TAGS.values())
    hp = found["hparams"]
    assert (hp["backbone"], hp["weights"], hp["freeze"], hp["optimizer"]) == ("smallcnn", "none", "1", "AdamW")
    assert (hp["image_size"], hp["global_batch_size"], hp["max_epochs"], hp["world_size"]) == (32, 8, 2, 1)
    assert hp["lr"] == pytest.approx(1e-3) and hp["seed"] == 42 and hp["data"] == "ImageFolderDataModule"
    assert hp["data_root"] == str(image_tree) and hp["augmentation"] == "standard"
    assert found["status"] == Status.Value("STATUS_SUCCESS")
    assert len(list(run.glob(HPARAMS_PREFIX + "*"))) == 1 and not hparams_in_lightning_files(run)
    # run_summary.json: finished, with the same metrics TensorBoard has
    written = summary(run)
    assert written["status"] == "finished" and written["stop_reason"] == "max_epochs"
    assert written["pid"] == os.getpid() and written["epochs_done"] == 2 and written["planned_epochs"] == 2
    assert written["hparams"] == hp
    assert written["train_images"] == 2 * train_images(run)
    assert written["test_acc"] is not None and 0.0 <= written["test_acc"] <= 1.0
    events = EventAccumulator(str(run))
    events.Reload()
    val_acc = [e.value for e in events.Scalars("val_acc")]
    assert written["best_val_acc"] == pytest.approx(max(val_acc))
    assert written["best_epoch"] == val_acc.index(max(val_acc))
    for key, tag in METRIC_TAGS.items():
        assert found["scalars"][tag] == pytest.approx(written[key]), key
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_a_resumed_run_updates_its_own_session(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=1)])
    run = run_dir(in_tmp)
    first = summary(run)
    assert session(run)["hparams"]["max_epochs"] == 1
    main(["fit", *tiny_args(image_tree, epochs=2), "--ckpt_path", "last"])
    assert not run_dir(in_tmp, 1).exists()
    # still one session for the folder, with the resumed run's hyperparameters, status and newest metrics
    assert len(list(run.glob(HPARAMS_PREFIX + "*"))) == 1 and not hparams_in_lightning_files(run)
    found = session(run)
    assert found["hparams"]["max_epochs"] == 2 and found["status"] == Status.Value("STATUS_SUCCESS")
    assert found["scalars"][METRIC_TAGS["epochs_done"]] == 2
    second = summary(run)
    assert second["status"] == "finished" and second["epochs_done"] == 2 and second["sessions"] == 2
    assert second["started_at"] == first["started_at"] and second["resumed_from"].endswith("last.ckpt")
    assert second["wall_time_s"] > first["wall_time_s"]  # the first session's time is carried in the checkpoint
    assert second["train_images"] == 2 * train_images(run)
    assert second["best_val_acc"] >= first["best_val_acc"]
    assert found["scalars"][METRIC_TAGS["wall_time_s"]] == pytest.approx(second["wall_time_s"])


@pytest.mark.parametrize(
    ("error", "status", "tensorboard"),
    [
        (ValueError("boom\nsecond line"), "failed", "STATUS_FAILURE"),
        (KeyboardInterrupt(), "interrupted", "STATUS_UNKNOWN"),
    ],
)
def test_a_failed_or_interrupted_fit_says_so(
    error: BaseException, status: str, tensorboard: str, image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = TransferClassifier.training_step

    def failing(self: TransferClassifier, *args: Any, **kwargs: Any) -> Any:
        if self.current_epoch == 1:
            raise error
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TransferClassifier, "training_step", failing)
    with pytest.raises(BaseException) as stopped:  # the error, or SystemExit from Ctrl-C handling
        main(["fit", *tiny_args(image_tree, epochs=3)])
    assert stopped.type in (type(error), SystemExit)
    run = run_dir(in_tmp)
    written = summary(run)
    assert written["status"] == status and written["epochs_done"] == 1 and written["planned_epochs"] == 3
    assert written.get("error") == ("ValueError: boom" if status == "failed" else None)
    assert session(run)["status"] == Status.Value(tensorboard)


def test_a_separate_test_records_what_it_has(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=1)])
    ckpt = run_dir(in_tmp) / "checkpoints" / "best.ckpt"
    main(["test", *tiny_args(image_tree), "--ckpt_path", str(ckpt)])
    assert not run_dir(in_tmp, 1).exists()  # a test is not a training run: it writes beside the run it tests
    written = summary(run_dir(in_tmp) / "test_0")
    assert written["command"] == "test" and written["tested_checkpoint"] == str(ckpt.resolve())
    assert 0.0 <= written["test_acc"] <= 1.0
    assert summary(run_dir(in_tmp))["test_acc"] is None  # the fit's own summary is another process's


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_writes_one_summary_with_every_ranks_images(tree_factory, tmp_path: Path) -> None:
    # 16 training images: 4 batches of 2 per rank (see tests/test_ddp.py's uneven_tree)
    root = tree_factory("data", per_class={"red": 4, "green": 9, "blue": 8})
    args = [
        "fit", "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.val_fraction", "0.3",
        "--model", "TransferClassifier", "--model.backbone", "smallcnn", "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu", "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar",
        "false", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--experiment", "ddp",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "lit_transfer", *args], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "ddp" / "version_0"
    written = summary(run)
    assert written["status"] == "finished" and written["hparams"]["world_size"] == 2
    assert written["hparams"]["global_batch_size"] == 4
    assert written["train_images"] == train_images(run) == 16  # both ranks' 8, not rank 0's alone
    assert len(list(run.glob(HPARAMS_PREFIX + "*"))) == 1 and session(run)["hparams"]["devices"] == 2
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    assert not (tmp_path / "runs" / "ddp" / "version_1").exists()
    # the same run's embedding projector: one, with the validation points of both ranks (3 and 2 of the 5)
    (embedding,) = projector(run)
    truth = val_classes(run, root)
    rows = embedding["rows"]
    assert len(truth) == 5 and sorted(r["path"] for r in rows) == sorted(truth)  # each file once
    assert all(r["label"] == truth[r["path"]] for r in rows)
    assert embedding["features"].shape[0] == 5 and embedding["sprite"] == (3 * 32, 3 * 32)
