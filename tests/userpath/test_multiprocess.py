"""The README's multi-process commands, exactly as written (only the data path swapped), with the user's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from userpath import lit, scalars, user_args

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs/quickstart.yaml")
CPU_DEBUG = str(REPO / "configs/trainer/cpu_debug.yaml")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def test_readme_cpu_debug_command(tree_factory, tmp_path: Path) -> None:
    """``fit --config configs/quickstart.yaml --config configs/trainer/cpu_debug.yaml``: two gloo processes."""
    root = tree_factory("digits", per_class=10)
    lit("fit", "--config", QUICKSTART, "--config", CPU_DEBUG, "--data.init_args.root", str(root), cwd=tmp_path)
    run = next((tmp_path / "runs").glob("*/version_0"))
    assert (run / "checkpoints/last.ckpt").is_file()
    logged = scalars(run)
    assert "val_acc" in logged and "test_acc" in logged  # quickstart tests after fit


def test_two_processes_with_default_progress_bar_and_workers(tree_factory, tmp_path: Path) -> None:
    """``--trainer.devices 2 --trainer.strategy ddp`` with everything else at its default (bar on, workers on)."""
    # 9 per class: 21 training images, 11 per rank, so no rank gets a one-image batch (BatchNorm cannot train on it)
    root = tree_factory("data", per_class=9)
    args = user_args(root, "--trainer.devices", "2", "--trainer.strategy", "ddp", epochs=1)
    i = args.index("--data.num_workers")
    del args[i : i + 2]  # the default worker count: the cores shared among the two processes
    result = lit("fit", *args, cwd=tmp_path)
    assert "Epoch 0" in result.stdout + result.stderr  # rank 0's progress bar drew
    assert (tmp_path / "runs/user/version_0/checkpoints/last.ckpt").is_file()
    assert "val_acc" in scalars(tmp_path / "runs/user/version_0")


def test_a_rank_without_readable_validation_images_does_not_hang(tree_factory, tmp_path: Path) -> None:
    """Two validation files, the one on rank 0's shard truncated: rank 0 sees no batch, rank 1 one image."""
    train = tree_factory("train", per_class=6)
    val = tree_factory("val", per_class=1, classes=("green", "red"), seed=5)
    broken = val / "green/img_000.png"  # sorted first: rank 0's shard
    broken.write_bytes(broken.read_bytes()[:60])  # the header still reads, the pixels do not
    args = user_args(train, "--data.val_dir", str(val), "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--model.backbone", "smallcnn", epochs=2)  # fmt: skip
    args[args.index("--data.root")] = "--data.train_dir"
    lit("fit", *args, cwd=tmp_path, timeout=240)
    logged = scalars(tmp_path / "runs/user/version_0")
    assert len(logged["val_acc"]) == 2  # both epochs computed their metrics on both ranks
    assert (tmp_path / "runs/user/version_0/bad_images.csv").read_text().count("img_000.png") == 1


def test_torchrun_launches_the_same_config(tree_factory, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node N -m lit_transfer fit ...`` (the README's form, with the CPU preset for 2)."""
    import socket
    import subprocess
    import sys

    root = tree_factory("digits", per_class=10)
    with socket.socket() as s:  # a free port instead of torchrun's fixed default, so parallel test runs do not meet
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", port, "-m", "lit_transfer", "fit", "--config", QUICKSTART,
         "--config", CPU_DEBUG, "--data.init_args.root", str(root)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((tmp_path / "runs").glob("*/version_*"))
    assert len(runs) == 1 and (runs[0] / "checkpoints/last.ckpt").is_file()  # one run folder, written by rank 0
    writers = {p.name.split(".")[-2] for p in runs[0].glob("events.out.tfevents.*")}
    assert len(writers) == 1  # TensorBoard events from one process: rank 0 (fit and the test after it)


def test_a_validation_split_smaller_than_the_processes_is_refused(tree_factory, tmp_path: Path) -> None:
    train = tree_factory("train", per_class=6)
    val = tree_factory("val", per_class=1, classes=("red",), seed=5)  # one image, two processes
    args = user_args(train, "--data.val_dir", str(val), "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--model.backbone", "smallcnn", epochs=1)  # fmt: skip
    args[args.index("--data.root")] = "--data.train_dir"
    result = lit("fit", *args, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 2 and "the val split has 1 image(s) for 2 processes" in result.stderr

