"""lit_transfer.core.checkpoints: one safe loader, one error that names the file, says what is wrong and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lit_transfer.core.checkpoints import CheckpointLoadError, CheckpointNotFoundError, load_checkpoint
from lit_transfer.core.errors import ConfigError


class Payload:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"echo pwned > '{self.marker}'",)


def problem(path: Path, **kwargs: object) -> CheckpointLoadError:
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint(path, **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    return info.value


def test_a_good_file_loads_memory_mapped_or_not(tmp_path: Path) -> None:
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, path)
    for mmap in (False, True):
        assert torch.equal(load_checkpoint(path, mmap=mmap, require_state_dict=True)["state_dict"]["w"], torch.ones(3))
    legacy = tmp_path / "legacy.ckpt"  # no zip: read whole even when memory-mapping is asked for
    torch.save({"state_dict": {}}, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy, mmap=True) == {"state_dict": {}}


def test_each_problem_is_named_with_its_fix(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    assert "is a folder" in str(problem(tmp_path / "folder")) and "last.ckpt" in str(problem(tmp_path / "folder"))
    missing = problem(tmp_path / "nowhere.ckpt")
    assert isinstance(missing, CheckpointNotFoundError) and isinstance(missing, FileNotFoundError)
    assert "does not exist" in str(missing)
    (tmp_path / "notes.ckpt").write_text("hello\n")
    assert "not a PyTorch checkpoint file: it starts with b'hell'" in str(problem(tmp_path / "notes.ckpt"))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert "empty" in str(problem(tmp_path / "empty.ckpt"))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[:1000])
    assert "truncated or corrupt" in str(problem(tmp_path / "cut.ckpt", mmap=True))
    torch.save({"epoch": 1}, tmp_path / "bare.ckpt")
    assert "no state_dict" in str(problem(tmp_path / "bare.ckpt", require_state_dict=True))
    assert load_checkpoint(tmp_path / "bare.ckpt") == {"epoch": 1}


def test_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": Payload(marker)}}, tmp_path / "evil.pth")
    err = problem(tmp_path / "evil.pth", what="weights file", hint="or try --ckpt_path last")
    text = str(err)
    assert text.startswith(f"weights file {str(tmp_path / 'evil.pth')!r} cannot be loaded safely")
    assert "weights_only=True" in text and "pickled objects" in text and "torch.save(model.state_dict()" in text
    assert text.endswith("; or try --ckpt_path last") and "\n" not in text
    assert not marker.exists()
