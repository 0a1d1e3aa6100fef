"""Background checkpoint writes: a point-in-time snapshot, written in order, failures never lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_transfer.callbacks.checkpoint import AsyncAtomicCheckpointIO


def test_saves_the_state_at_the_time_of_the_call(tmp_path: Path) -> None:
    io = AsyncAtomicCheckpointIO()
    weights = torch.zeros(1000)
    io.save_checkpoint({"state_dict": {"w": weights}, "epoch": 3}, tmp_path / "a.ckpt")
    weights += 1  # training goes on while the file is written
    io.teardown()
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert saved["epoch"] == 3 and torch.equal(saved["state_dict"]["w"], torch.zeros(1000))


def test_saves_and_removals_happen_in_order(tmp_path: Path) -> None:
    io = AsyncAtomicCheckpointIO()
    for value in range(5):
        io.save_checkpoint({"v": torch.tensor(value)}, tmp_path / "last.ckpt")
    io.save_checkpoint({"v": torch.tensor(9)}, tmp_path / "best.ckpt")
    io.remove_checkpoint(tmp_path / "best.ckpt")  # queued behind its save
    assert int(io.load_checkpoint(tmp_path / "last.ckpt")["v"]) == 4  # a load waits for the queue
    io.teardown()
    assert not (tmp_path / "best.ckpt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary files left


def test_a_failed_write_is_raised_at_the_next_call_or_teardown(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the checkpoint folder should be")
    io = AsyncAtomicCheckpointIO()
    io.save_checkpoint({"v": torch.tensor(1)}, blocker / "x.ckpt")  # returns at once
    with pytest.raises(OSError):
        io.teardown()
    io.save_checkpoint({"v": torch.tensor(1)}, blocker / "y.ckpt")
    io._pending[0].exception()  # let it fail
    with pytest.raises(OSError):
        io.save_checkpoint({"v": torch.tensor(2)}, tmp_path / "z.ckpt")
    io.teardown()
