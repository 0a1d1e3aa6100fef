"""Hostile conditions through the real command line: concurrent starts, refused resumes, data vanishing mid-run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from lit_transfer.core.run_folder import reserve_version


def fit_args(root: Path, *extra: str, epochs: int = 1, experiment: str = "sweep") -> list[str]:
    # no loader workers and no progress bar, to keep these runs short: tests/userpath runs fit with both on
    return [
        "fit",
        "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
        "--data.batch_size", "8", "--data.num_workers", "0", "--data.val_fraction", "0.25",
        "--model", "TransferClassifier", "--model.backbone", "smallcnn",
        "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--experiment", experiment, *extra,
    ]  # fmt: skip


def lit(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lit_transfer", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


SYNCED = """
import sys, time
from lit_transfer.cli import main  # imported first: the processes then start the run at the same moment
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.argv = ["lit_transfer", *sys.argv[2:]]
main()
"""


def lit_at(start: float, *args: str, cwd: Path) -> subprocess.Popen[str]:
    """``python -m lit_transfer ARGS``, started at the wall-clock time ``start`` (after its imports)."""
    return subprocess.Popen(
        [sys.executable, "-c", SYNCED, str(start), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


# --- 3. concurrent fits of one experiment ---------------------------------------------------------------------------


def test_reserve_version_never_hands_out_a_folder_twice(tmp_path: Path) -> None:
    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    (tmp_path / "exp" / "version_x").mkdir()  # not a version: ignored
    got: list[int] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        got.append(reserve_version(tmp_path / "exp"))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))


def test_concurrent_fits_get_their_own_run_folders(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    start = time.time() + 15  # time for the three to import torch and lit_transfer on two cores
    lrs = ("0.01", "0.002", "0.0005")
    procs = {lr: lit_at(start, *fit_args(root, "--optimizer.lr", lr), cwd=tmp_path) for lr in lrs}
    for lr, proc in procs.items():
        code, out = finish(proc)
        assert code == 0, f"lr {lr}: {out[-3000:]}"
    runs = sorted((tmp_path / "runs" / "sweep").glob("version_*"))
    assert [r.name for r in runs] == ["version_0", "version_1", "version_2"]
    seen = set()
    for run in runs:
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, run
        ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and not any(n.startswith("last-v") for n in ckpts), ckpts
        lr = yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["init_args"]["lr"]
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr)
        seen.add(lr)
    assert seen == {0.01, 0.002, 0.0005}


# --- 5. a refused resume rewrites nothing ----------------------------------------------------------------------------


def test_refused_resume_leaves_the_run_files_alone(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    code, out = finish(lit(*fit_args(root, experiment="refuse"), cwd=tmp_path))
    assert code == 0, out[-3000:]
    run = tmp_path / "runs" / "refuse" / "version_0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".yaml", ".csv")}
    assert {"config.yaml", "split_manifest.csv"} <= before.keys()
    (root / "red" / "img_000.png").rename(root / "red" / "moved_away.png")  # one file gone, one new

    resumed = fit_args(root, "--optimizer.lr", "0.5", epochs=2, experiment="refuse")
    code, out = finish(lit(*resumed, "--ckpt_path", "last", cwd=tmp_path))
    assert code == 2, out[-3000:]
    assert "data changed" in out and "img_000.png" in out and "moved_away.png" in out
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".yaml", ".csv")}
    assert after == before
    # a fresh fit refused before training leaves no empty run folder behind either
    code, out = finish(lit(*fit_args(root, "--checkpoint.monitor", "val_accuracy", experiment="refuse"), cwd=tmp_path))
    assert code == 2 and "val_accuracy" in out, out[-3000:]
    assert [p.name for p in (tmp_path / "runs" / "refuse").iterdir()] == ["version_0"]


# --- 7. the data vanishes mid-run ------------------------------------------------------------------------------------


def test_data_deleted_mid_run_stops_the_run(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    # loader workers on (2, persistent: the default) since they are what reads the vanished files
    proc = lit(*fit_args(root, "--data.num_workers", "2", epochs=200, experiment="vanish"), cwd=tmp_path)
    last = tmp_path / "runs" / "vanish" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(root)
    epoch_then = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    code, out = finish(proc, timeout=120)
    assert code == 1, out[-3000:]
    assert "could not be read during the run" in out and "max_bad_fraction" in out and "--ckpt_path last" in out
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] <= epoch_then + 1  # no empty epochs saved


# --- 14. out of shared memory ----------------------------------------------------------------------------------------


def small_shm_works() -> str | None:
    """Why a private 256 KiB /dev/shm cannot be had here (``unshare -m`` needs root or user namespaces), or None."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=256k tmpfs /dev/shm"], capture_output=True, text=True
    )
    return None if probe.returncode == 0 else f"unshare -m with a tmpfs mount is not permitted: {probe.stderr.strip()}"


def test_full_dev_shm_fails_fast_and_says_so(tree_factory, tmp_path: Path) -> None:
    reason = small_shm_works()
    if reason is not None:
        pytest.skip(reason)
    root = tree_factory("data", per_class=20)
    args = fit_args(root, "--data.num_workers", "2", "--data.image_size", "64", "--data.batch_size", "16")
    command = " ".join(["exec", sys.executable, "-m", "lit_transfer", *args])
    # the default loader_timeout, 0, waited forever: the batch's transfer failed unseen in the worker's queue thread
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs /dev/shm && {command}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lit_transfer: stopped:") and "/dev/shm" in last and "num_workers" in last, last
    assert "No space left on device" in last


# --- the run folder: one answer for every run file -------------------------------------------------------------------


def test_without_a_run_folder_nothing_is_written_to_the_working_directory(
    tree_factory, in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    from lit_transfer.cli import main

    root = tree_factory("data", per_class=6)
    main(fit_args(root, experiment="nofolder"))
    ckpt = in_tmp / "runs" / "nofolder" / "version_0" / "checkpoints" / "last.ckpt"
    (in_tmp / "predictions.csv").write_text("the user's own file\n")
    (in_tmp / "config.yaml").write_text("the user's own config\n")
    # a fit without a logger keeps its config.yaml and checkpoints in its run folder, never the working directory
    main([*fit_args(root, experiment="nofolder"), "--trainer.logger", "false"])
    unlogged = in_tmp / "runs" / "nofolder" / "version_1"
    assert (unlogged / "config.yaml").is_file() and (unlogged / "checkpoints" / "last.ckpt").is_file()
    assert not (in_tmp / "checkpoints").exists()
    predict = ["predict", *fit_args(root, experiment="nofolder")[1:], "--ckpt_path", str(ckpt)]
    predict += ["--data.predict_dir", str(root / "red")]
    for switch in (["--trainer.fast_dev_run", "true"], ["--trainer.logger", "false"]):
        with pytest.warns(UserWarning, match="predictions.csv not written"):
            main([*predict, *switch])
        assert (in_tmp / "predictions.csv").read_text() == "the user's own file\n"
        assert (in_tmp / "config.yaml").read_text() == "the user's own config\n"
        assert not list(in_tmp.glob("split_manifest.csv")) and not list(in_tmp.glob("bad_images.csv"))
    main(predict)  # with its run folder: written there
    assert (in_tmp / "runs" / "nofolder" / "version_0" / "predict_0" / "predictions.csv").is_file()
