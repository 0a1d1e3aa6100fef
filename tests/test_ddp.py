"""DDP on CPU (gloo): the same config on 2 processes and on 2 simulated nodes, proven on this machine."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from test_tensorboard_dashboard import _events, _text

from lit_transfer.data.splits import stratified_split

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def base_args(root: Path, *extra: str, epochs: int = 1, experiment: str = "ddp") -> list[str]:
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "2",
        # no loader workers, only to keep these many multi-process runs short; tests/userpath runs DDP with them
        "--data.num_workers", "0",
        "--data.val_fraction", "0.3",
        "--model", "TransferClassifier",
        "--model.backbone", "smallcnn",
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_model_summary", "false",
        "--experiment", experiment,
        *extra,
    ]  # fmt: skip


DDP2 = ("--trainer.devices", "2", "--trainer.strategy", "ddp")


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lit_transfer", *args], cwd=cwd, capture_output=True, text=True, timeout=240,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def scalars(run_dir: Path) -> dict[str, float]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


@pytest.fixture
def uneven_tree(tree_factory) -> Path:
    # An odd number of validation images, which a padding sampler would count one image twice for: under the
    # per-file hash split (val_fraction 0.3, seed 42) these 21 images give 2 + 1 + 2 = 5 (blue, green, red). The
    # 16 training images give each of 2 ranks 4 full batches of 2: a batch of one would fail a training BatchNorm.
    per_class = {"red": 4, "green": 9, "blue": 8}
    files = {name: [f"{name}/img_{i:03d}.png" for i in range(n)] for name, n in per_class.items()}
    splits = Counter(s.split for s in stratified_split(files, sorted(per_class), 0.3, 0.0, seed=42))
    assert splits["val"] % 2 == 1 and splits["train"] % 4 == 0, splits
    return tree_factory("data", per_class=per_class)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_report_the_metrics_of_one(uneven_tree: Path, tmp_path: Path) -> None:
    run(["fit", *base_args(uneven_tree)], tmp_path)
    ckpt = str(tmp_path / "runs/ddp/version_0/checkpoints/last.ckpt")
    run(["validate", *base_args(uneven_tree, experiment="one"), "--ckpt_path", ckpt], tmp_path)
    run(["validate", *base_args(uneven_tree, *DDP2, experiment="two"), "--ckpt_path", ckpt], tmp_path)
    # a checkpoint of another experiment is evaluated into <experiment>/evaluations/, by both ranks into one folder
    one = scalars(tmp_path / "runs/one/evaluations/validate_0")
    two = scalars(tmp_path / "runs/two/evaluations/validate_0")
    for key in ("val_acc", "val_loss", "val_f1"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    # the reports too: PR curves and tables of every rank's validation images, counted once
    reports = [_events(tmp_path / f"runs/{e}/evaluations/validate_0") for e in ("one", "two")]
    curves = [t for t in reports[0].Tags()["tensors"] if t.startswith("reports/pr_curve/")]
    assert len(curves) == 3
    for tag in curves:
        a, b = (tensor_util.make_ndarray(ev.Tensors(tag)[-1].tensor_proto) for ev in reports)
        np.testing.assert_array_equal(a, b)
        assert a[0, 0] + a[1, 0] + a[2, 0] + a[3, 0] == 5  # tp + fp + tn + fn: all 5 validation images
    for tag in ("reports/per_class", "reports/top_confusions"):
        steps = [ev.Tensors(f"{tag}/text_summary")[-1].step for ev in reports]
        assert _text(reports[0], tag, steps[0]) == _text(reports[1], tag, steps[1])


def test_two_processes_predict_every_file_once(uneven_tree: Path, tmp_path: Path) -> None:
    run(["fit", *base_args(uneven_tree, *DDP2)], tmp_path)
    run_dir = tmp_path / "runs/ddp/version_0"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        ["best.ckpt", "last.ckpt", *[p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")]]
    )
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # one TensorBoard writer: rank 0's
    with open(run_dir / "split_manifest.csv") as f:
        assert len(list(csv.DictReader(f))) == 21
    run(["predict", *base_args(uneven_tree, *DDP2), "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"),
         "--data.predict_dir", str(uneven_tree / "green")], tmp_path)  # fmt: skip
    with open(run_dir / "predict_0/predictions.csv") as f:  # beside the run it predicts with, from both ranks
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in (uneven_tree / "green").iterdir())


def test_two_simulated_nodes(uneven_tree: Path, tmp_path: Path) -> None:
    port = str(free_port())
    args = [
        sys.executable,
        "-m",
        "lit_transfer",
        "fit",
        *base_args(uneven_tree, "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"),
    ]
    procs = []
    for node in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node),
               "WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # fmt: skip
        procs.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))  # fmt: skip
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = list((tmp_path / "runs/ddp").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "checkpoints/last.ckpt").exists()
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_to_all_ranks_saves_once_and_exits_143(uneven_tree: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit_transfer", "fit", *base_args(uneven_tree, *DDP2, epochs=500)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "LIT_TRANSFER_SIGTERM_GRACE": "30"},
    )  # fmt: skip
    ckpts = tmp_path / "runs/ddp/version_0/checkpoints"
    wait_for(ckpts / "last.ckpt", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # what scancel does: every process of the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert torch.load(ckpts / "interrupted.ckpt", weights_only=True)["state_dict"]


def test_sigterm_to_one_rank_ends_the_job(uneven_tree: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit_transfer", "fit", *base_args(uneven_tree, *DDP2, epochs=500)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "LIT_TRANSFER_SIGTERM_GRACE": "5"},
    )  # fmt: skip
    wait_for(tmp_path / "runs/ddp/version_0/checkpoints/last.ckpt", proc)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "rank 1 not found"
    start = time.monotonic()
    os.kill(int(children[0]), signal.SIGTERM)
    try:
        proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert time.monotonic() - start < 90


def test_feature_cache_under_ddp_matches_uncached(uneven_tree: Path, tmp_path: Path) -> None:
    """Each rank extracts its shard, rank 0 publishes one entry per split; training (fused steps too) and predictions
    are unchanged."""
    extra = (*DDP2, "--model.freeze", "backbone", "--data.augmentation", "none", "--trainer.max_epochs", "2")
    run(["fit", *base_args(uneven_tree, *extra, "--cache_features.enabled", "false", experiment="plain")], tmp_path)
    run(["fit", *base_args(uneven_tree, *extra, experiment="cached")], tmp_path)
    cache = tmp_path / "runs/feature_cache"
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["train", "val"]
    plain, cached = scalars(tmp_path / "runs/plain/version_0"), scalars(tmp_path / "runs/cached/version_0")
    for key in ("val_acc", "val_loss", "train_loss", "train_acc"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-5), key
    # fused steps (manual optimization, gradients synchronised by manual_backward): the same steps and weights
    run(["fit", *base_args(uneven_tree, *extra, "--cache_features.fused_steps", "3", experiment="fused")], tmp_path)
    checkpoints = [
        torch.load(tmp_path / f"runs/{name}/version_0/checkpoints/last.ckpt", weights_only=True)
        for name in ("plain", "cached", "fused")
    ]
    assert checkpoints[2]["global_step"] == checkpoints[0]["global_step"] > 0
    heads = [c["state_dict"] for c in checkpoints]
    for key in (k for k in heads[0] if k.startswith("head.")):
        torch.testing.assert_close(heads[1][key], heads[0][key], rtol=0, atol=1e-5)
        torch.testing.assert_close(heads[2][key], heads[0][key], rtol=0, atol=1e-5)
    ckpt = str(tmp_path / "runs/cached/version_0/checkpoints/last.ckpt")
    run(["predict", *base_args(uneven_tree, *extra, experiment="cached"), "--ckpt_path", ckpt,
         "--data.predict_dir", str(uneven_tree / "green")], tmp_path)  # fmt: skip
    with open(tmp_path / "runs/cached/version_0/predict_0/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in (uneven_tree / "green").iterdir())
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["predict", "train", "val"]


# --- every recipe switch at once (issue 18): the fine_tune recipe (gradual unfreezing, layer-wise lr decay, the
# schedule restarted), EMA, mixup and cutmix, TrivialAugment, --calibrate temperature; TTA for validate. The same
# switches with the user's loader workers and progress bar: tests/userpath/test_recipe_resume.py

SWITCHES = (
    "--recipe", "fine_tune",
    "--model.backbone", "resnet18",
    "--ema.enabled", "true", "--ema.decay", "0.9",
    "--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "0.4",
    "--data.augmentation", "trivialaugment",
    "--calibrate", "temperature",
)  # fmt: skip


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint that training determines: weights, EMA, live weights, optimizer state."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    found: dict[str, torch.Tensor] = {}

    def walk(value: object, key: str) -> None:
        if isinstance(value, torch.Tensor):
            found[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")

    for part in ("state_dict", "current_model_state", "optimizer_states", "lr_schedulers"):
        walk(state.get(part), part)
    assert any(k.startswith("current_model_state") for k in found), "no live weights beside the EMA"
    return found


def test_every_switch_resumes_bitwise_and_evaluates_as_one_process_under_ddp(uneven_tree: Path, tmp_path: Path) -> None:
    # the schedule spans the run (cosine, restarted at the unfreeze), so the resumed run must be the same 2-epoch run:
    # it starts from the straight run's epoch-0 checkpoint
    keep = ("--checkpoint.save_top_k", "-1")
    run(["fit", *base_args(uneven_tree, *DDP2, *SWITCHES, *keep, epochs=2, experiment="straight")], tmp_path)
    straight = tmp_path / "runs/straight/version_0"
    (first,) = (straight / "checkpoints").glob("epoch000*.ckpt")
    run(["fit", *base_args(uneven_tree, *DDP2, *SWITCHES, epochs=2, experiment="resumed"), "--ckpt_path", str(first)],
        tmp_path)  # fmt: skip
    a = tensors(straight / "checkpoints/last.ckpt")
    b = tensors(tmp_path / "runs/resumed/version_0/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after the resume, first {differ[:3]}"
    groups = torch.load(straight / "checkpoints/last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"]
    assert len(groups) > 2  # layer decay: a group per backbone stage
    # frozen in epoch 0 (the parameters stay in the optimizer from the start), thawed at epoch 1 and synchronised:
    # the resumed processes could only agree bitwise with the straight ones if every rank trained them alike
    key = "current_model_state/backbone.layer1.0.conv1.weight"
    assert not torch.equal(tensors(first)[key], a[key])

    # calibration on both ranks' validation images: one temperature in the best checkpoint, ECE not worse
    best = torch.load(straight / "checkpoints/best.ckpt", weights_only=True)
    calibration = best["lit_transfer"]["calibration"]
    assert best["state_dict"]["temperature"].item() == pytest.approx(best["lit_transfer"]["temperature"])
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-6

    # test-time augmentation: two processes validate exactly as one
    ckpt = str(straight / "checkpoints/best.ckpt")
    tta = ("--data.tta", "ten_crop", "--ckpt_path", ckpt)
    run(["validate", *base_args(uneven_tree, *SWITCHES, *tta, experiment="one")], tmp_path)
    run(["validate", *base_args(uneven_tree, *DDP2, *SWITCHES, *tta, experiment="two")], tmp_path)
    one = scalars(tmp_path / "runs/one/evaluations/validate_0")
    two = scalars(tmp_path / "runs/two/evaluations/validate_0")
    for key in ("val_acc", "val_loss", "val_ece"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_lr_auto_searches_once_and_both_processes_train_at_its_rate(uneven_tree: Path, tmp_path: Path) -> None:
    run(["fit", *base_args(uneven_tree, *DDP2, "--optimizer", "SGD", "--optimizer.lr", "auto")], tmp_path)
    experiment = tmp_path / "runs/ddp"
    assert [p.name for p in experiment.glob("lr_find*.png")] == ["lr_find.png"]  # rank 0 searched, once
    saved = yaml.safe_load((experiment / "version_0/config.yaml").read_text(encoding="utf-8"))
    lr = saved["optimizer"]["init_args"]["lr"]
    assert isinstance(lr, float) and lr > 0
    state = torch.load(experiment / "version_0/checkpoints/last.ckpt", weights_only=True)
    assert {g["lr"] for g in state["optimizer_states"][0]["param_groups"]} == {lr}


def test_a_finished_command_destroys_the_process_group(image_tree: Path, in_tmp: Path) -> None:
    """Left to interpreter shutdown, Gloo's threads can abort a process that finished well (SIGABRT under torchrun)."""
    from test_cli import tiny_args

    from lit_transfer.cli import main

    torch.distributed.init_process_group("gloo", init_method=f"file://{in_tmp / 'store'}", rank=0, world_size=1)
    try:
        main(["fit", *tiny_args(image_tree)])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
