"""The user's path: a resumed run finishes with the weights of an uninterrupted one, bit for bit, with loader workers.

Issue 12: with workers (the default) the first epoch after ``--ckpt_path last`` replayed epoch 0's shuffle and
augmentations, because the loader's workers drew their first indices before Lightning set the sampler's epoch. Every
run here has the user's defaults (2 persistent workers, ``standard`` augmentation, progress bar, a BatchNorm
backbone) plus dropout in the head, so every random stream of training is exercised.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from userpath import lit, lit_command, max_abs_diff, state_dict, user_args, write_tree

EPOCHS = 3
# a dropout head; batches of 8 (3 steps an epoch on 18 training images) only to keep the five runs short
EXTRA = ("--model.hidden_dims", "[16]", "--model.dropout", "0.5", "--data.batch_size", "8")


def fit_args(root: Path, experiment: str, epochs: int = EPOCHS) -> list[str]:
    """``fit`` of resnet18 at 32 px; everything else is the user's default."""
    return ["fit", *user_args(root, *EXTRA, epochs=epochs, experiment=experiment)]


def last_ckpt(work: Path, experiment: str) -> Path:
    return work / "runs" / experiment / "version_0" / "checkpoints" / "last.ckpt"


def assert_bitwise_equal(straight: Path, resumed: Path, context: str = "") -> None:
    """Every tensor of the two checkpoints' state dicts is identical (max |Δw| in the message otherwise)."""
    a, b = state_dict(straight), state_dict(resumed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ (first {differ[:3]}), max |Δw| {max_abs_diff(a, b)} {context}"


def epoch_seconds(run_dir: Path) -> float:
    """The shortest time between two validation ends of a run (its TensorBoard wall times): one epoch."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    ends = [e.wall_time for e in events.Scalars("val_loss")]
    return min(b - a for a, b in itertools.pairwise(ends))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tree (3 classes x 8 images of 40x48) and one uninterrupted run of ``EPOCHS`` epochs on it."""
    work = tmp_path_factory.mktemp("resume")
    write_tree(work / "data", per_class=8)
    lit(*fit_args(work / "data", "straight"), cwd=work)
    assert torch.load(last_ckpt(work, "straight"), weights_only=True)["epoch"] == EPOCHS - 1
    return work


def test_stop_after_epoch_one_and_resume_is_bitwise_exact(work: Path) -> None:
    lit(*fit_args(work / "data", "stopped", epochs=1), cwd=work)
    lit(*fit_args(work / "data", "stopped"), "--ckpt_path", "last", cwd=work)
    assert_bitwise_equal(last_ckpt(work, "straight"), last_ckpt(work, "stopped"))


def kill_9_during_fit(work: Path, experiment: str, delay: float) -> bool:
    """Start a fit, ``kill -9`` its main process ``delay`` s after its first checkpoint; False if it ended first."""
    ckpt = last_ckpt(work, experiment)
    proc = subprocess.Popen(
        lit_command(*fit_args(work / "data", experiment)), cwd=work, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ckpt.exists(), "the run wrote no checkpoint"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)  # the main process only, as `kill -9 PID` does
        return proc.wait() == -signal.SIGKILL
    finally:
        # its loader workers were orphaned: end them (they would exit by themselves a few seconds later)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_9_at_a_random_moment_then_resume_last_is_bitwise_exact(work: Path) -> None:
    # the first checkpoint appears early in epoch 1 and two epochs remain: a kill within 3/4 of an epoch lands in
    # epoch 1 or early in epoch 2 (possibly while epoch 1's checkpoint is written), never after training ended;
    # on a loaded machine epochs vary, so a run that finished first is tried again with a shorter delay
    epoch = epoch_seconds(last_ckpt(work, "straight").parents[1])
    for attempt in range(3):
        delay = random.Random().uniform(0.0, 0.75 * epoch) / 2**attempt
        if kill_9_during_fit(work, experiment := f"killed{attempt}", delay):
            break
    else:
        pytest.fail(f"three runs ended before they were killed (last {delay:.2f} s after a checkpoint)")
    ckpt = last_ckpt(work, experiment)
    resumed_after = torch.load(ckpt, weights_only=True)["epoch"]
    when = f"(killed {delay:.2f} s after the first checkpoint, resumed after epoch {resumed_after})"
    lit(*fit_args(work / "data", experiment), "--ckpt_path", "last", cwd=work)
    assert torch.load(ckpt, weights_only=True)["epoch"] == EPOCHS - 1
    assert_bitwise_equal(last_ckpt(work, "straight"), ckpt, when)


def sigterm_during_fit(work: Path, experiment: str, delay: float) -> tuple[Path, int, int]:
    """Start a fit, SIGTERM it ``delay`` s after its first checkpoint: (its checkpoints folder, epoch, batches done)."""
    ckpts = last_ckpt(work, experiment).parent
    proc = subprocess.Popen(
        lit_command(*fit_args(work / "data", experiment)), cwd=work, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (ckpts / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    saved = torch.load(ckpts / "interrupted.ckpt", weights_only=True)
    return ckpts, saved["epoch"], saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]


def test_sigterm_mid_epoch_then_resume_last_is_bitwise_exact(work: Path) -> None:
    """Issue 13: the epoch continued at the saved batch index but the loader restarted at its first batch."""
    epoch = epoch_seconds(last_ckpt(work, "straight").parents[1])
    for attempt in range(3):  # the signal must land between two training steps of an epoch (3 per epoch)
        ckpts, stopped_epoch, done = sigterm_during_fit(work, f"termed{attempt}", (0.15 + 0.2 * attempt) * epoch)
        if 0 < done < 3:
            break
    else:
        pytest.fail(f"three SIGTERMs all landed on an epoch boundary (last: epoch {stopped_epoch}, batch {done})")

    # as after a SIGTERM in epoch 0: interrupted.ckpt is the run's only checkpoint, and --ckpt_path last takes it
    for other in ckpts.glob("*.ckpt"):
        if other.name != "interrupted.ckpt":
            other.unlink()
    resumed = lit(*fit_args(work / "data", f"termed{attempt}"), "--ckpt_path", "last", cwd=work)
    assert "interrupted.ckpt" in resumed.stderr + resumed.stdout
    assert "not resumable" not in resumed.stderr  # Lightning's warning for loaders that restart mid-epoch
    when = f"(stopped after batch {done} of epoch {stopped_epoch})"
    assert_bitwise_equal(last_ckpt(work, "straight"), ckpts / "last.ckpt", when)
