"""Nothing but lit_transfer's own files is ever deleted: clean-cache, failed checkpoint writes, stale temporaries."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_transfer.callbacks.checkpoint import AsyncAtomicCheckpointIO, AtomicCheckpointIO, is_valid_checkpoint
from lit_transfer.cli import main
from lit_transfer.features import MARKER_NAME
from lit_transfer.models import TransferClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_args(root: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
        "--data.batch_size", "8", "--data.num_workers", "0", "--data.augmentation", "none",
        "--model", "TransferClassifier", "--model.backbone", "smallcnn",
        "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--experiment", "tiny", *extra,
    ]  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (``None``) under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def clean(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run ``clean-cache`` in-process: its exit status and everything it printed."""
    code = 0
    try:
        main(["clean-cache", *args])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


# --- 1. clean-cache -------------------------------------------------------------------------------------------------


def test_clean_cache_deletes_only_its_own_entries(tree_factory, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    root = tree_factory("data", per_class=4)
    main(["fit", *tiny_args(root, "--model.freeze", "backbone")])  # a real run and a real cache in runs/
    cache = in_tmp / "runs" / "feature_cache"
    assert len(list(cache.iterdir())) == 2 and all((p / MARKER_NAME).is_file() for p in cache.iterdir())
    thesis = in_tmp / "thesis"
    (thesis / "photos").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\documentclass{book}")
    (thesis / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not much of a photo")
    run = in_tmp / "runs" / "tiny" / "version_0"
    before = snapshot(in_tmp)
    capsys.readouterr()

    for folder, why in [
        (thesis, "not a feature cache"),
        (run, "not a feature cache"),
        (run / "checkpoints", "not a feature cache"),
        (in_tmp / "runs", "did you mean --runs_dir"),
        (cache / next(p.name for p in cache.iterdir() if p.is_dir()), "not a feature cache"),  # one entry
    ]:
        code, said = clean(capsys, "--dir", str(folder))
        assert code == 2 and str(folder) in said and why in said, said
        assert snapshot(in_tmp) == before, folder

    code, said = clean(capsys, "--dry-run")  # lists, deletes nothing
    assert code == 0 and said.count("would delete") >= 3 and snapshot(in_tmp) == before

    # a cache folder that also holds someone else's files: the entries go, the rest stays, and it says so
    (cache / "notes.txt").write_text("mine")
    fake = cache / "train-smallcnn-0123456789abcdef01234567"
    fake.mkdir()
    (fake / "meta.json").write_text('{"key": "0123456789abcdef01234567", "complete": true, "parts": {}}')
    unfinished = cache / ".building-train-smallcnn-0123-89abcdef"  # an extraction killed half-way: the cache's own
    (unfinished / "part-0").mkdir(parents=True)
    (unfinished / MARKER_NAME).write_text(next(cache.glob(f"*/{MARKER_NAME}")).read_text())
    (unfinished / "part-0" / "indices.npy").write_bytes(b"\0" * 64)
    lookalike = cache / ".building-x-0123abcd"  # named like one, but no marker
    lookalike.mkdir()
    code, said = clean(capsys)
    assert code == 2 and "deleted 2 feature cache entries" in said and "notes.txt" in said and fake.name in said
    assert sorted(p.name for p in cache.iterdir()) == sorted(["notes.txt", fake.name, lookalike.name])
    assert (fake / "meta.json").is_file()
    others = {k: v for k, v in before.items() if not k.startswith("runs/feature_cache")}
    assert {k: v for k, v in snapshot(in_tmp).items() if not k.startswith("runs/feature_cache")} == others

    (cache / "notes.txt").unlink()
    (fake / "meta.json").unlink()
    fake.rmdir()
    lookalike.rmdir()
    main(["fit", *tiny_args(root, "--model.freeze", "backbone", "--trainer.max_epochs", "2")])
    before = snapshot(in_tmp)
    capsys.readouterr()
    code, said = clean(capsys)  # only the cache's own entries in it: the folder goes too
    assert code == 0 and "deleted 2 feature cache entries" in said and not cache.exists()
    others = {k: v for k, v in before.items() if not k.startswith("runs/feature_cache")}
    assert snapshot(in_tmp) == others


# --- 2. a failed checkpoint write ------------------------------------------------------------------------------------


def fail_second_write(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make the second checkpoint write of this process fail with ENOSPC, as on a full disk; returns the paths."""
    written: list[Path] = []
    write = AtomicCheckpointIO._write_file

    def full_disk(path: Path, data: memoryview) -> None:
        written.append(path)
        if len(written) == 2:
            with open(path, "wb") as f:
                f.write(bytes(data)[:100])  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(AtomicCheckpointIO, "_write_file", staticmethod(full_disk))
    return written


@pytest.mark.parametrize("io_class", [AtomicCheckpointIO, AsyncAtomicCheckpointIO])
def test_no_removal_or_alias_after_a_failed_save(io_class, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_second_write(monkeypatch)
    io = io_class()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "old.ckpt")
    io.link_checkpoint(tmp_path / "old.ckpt", tmp_path / "best.ckpt")
    with pytest.raises(OSError, match=r"could not write checkpoint .*new\.ckpt.*No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "new.ckpt")  # raises here if synchronous
        if isinstance(io, AsyncAtomicCheckpointIO):
            io.wait()
    io.remove_checkpoint(tmp_path / "old.ckpt")  # what ModelCheckpoint does after saving a new best
    io.link_checkpoint(tmp_path / "new.ckpt", tmp_path / "best.ckpt")
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "old.ckpt"]
    assert os.path.samefile(tmp_path / "best.ckpt", tmp_path / "old.ckpt")
    assert is_valid_checkpoint(tmp_path / "old.ckpt") is None


def test_full_disk_keeps_the_previous_best_checkpoint(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = fail_second_write(monkeypatch)
    # no monitor: each epoch's checkpoint replaces the previous one (a save, then the removal of the old file)
    args = tiny_args(image_tree, "--checkpoint.save_last", "false", "--checkpoint.monitor", "null",
                     "--cache_features.enabled", "false", epochs=2)  # fmt: skip
    with pytest.raises(OSError, match=r"could not write checkpoint '[^']*epoch001[^']*\.ckpt': .*No space left"):
        main(["fit", *args])
    ckpts = in_tmp / "runs" / "tiny" / "version_0" / "checkpoints"
    assert len(written) == 2 and written[1].parent.resolve() == ckpts
    names = sorted(p.name for p in ckpts.iterdir())
    assert len(names) == 2 and names[0] == "best.ckpt" and names[1].startswith("epoch000"), names
    assert is_valid_checkpoint(ckpts / names[1]) is None and os.path.samefile(ckpts / "best.ckpt", ckpts / names[1])


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Callable[[int], Path]:
    """``mount(size)``: a tmpfs of ``size`` bytes below ``tmp_path`` (needs root; skipped where mounting fails)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / "small_disk"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_real_full_disk_through_the_command_line(image_tree: Path, tmp_path: Path, small_tmpfs) -> None:
    disk = small_tmpfs(4 * 2**20)
    model = TransferClassifier(num_classes=3, backbone="smallcnn")
    checkpoint = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights and Adam's two moments
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    assert free > 2 * checkpoint
    (disk / "filler").write_bytes(b"\0" * (free - int(checkpoint * 1.5)))  # room for one checkpoint, not for two
    args = tiny_args(image_tree, "--checkpoint.save_last", "false", "--checkpoint.monitor", "null",
                     "--cache_features.enabled", "false",
                     "--runs_dir", str(disk / "runs"), epochs=3)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "lit_transfer", "fit", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "No space left on device" in done.stderr, done.stderr[-3000:]
    assert "could not write checkpoint" in done.stderr and "epoch001" in done.stderr
    ckpts = disk / "runs" / "tiny" / "version_0" / "checkpoints"
    kept = [p for p in ckpts.iterdir() if p.name.startswith("epoch")]
    assert [p.name[:8] for p in kept] == ["epoch000"], sorted(p.name for p in ckpts.iterdir())
    assert is_valid_checkpoint(kept[0]) is None and os.path.samefile(ckpts / "best.ckpt", kept[0])
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]


# --- 18. stale temporaries of killed writers -------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_checkpoint_temporaries_are_removed_live_ones_kept(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, "--cache_features.enabled", "false")])
    ckpts = in_tmp / "runs" / "tiny" / "version_0" / "checkpoints"
    dead = ckpts / f".last.ckpt.tmp-{dead_pid()}"
    dead.write_bytes(b"\0" * 4096)  # half of a last.ckpt, left by a kill during its write
    own = ckpts / f".epoch000.ckpt.tmp-{os.getpid()}"
    own.write_bytes(b"a write in progress")
    unrelated = [ckpts / ".last.ckpt.tmp-abc", ckpts / "notes.tmp-1", ckpts / f".notes.txt.tmp-{dead_pid()}"]
    for path in unrelated:
        path.write_text("not ours")
    sleeper = subprocess.Popen(["sleep", "120"])  # alive, but started after the file was written: a reused pid
    try:
        reused = ckpts / f".best.ckpt.tmp-{sleeper.pid}"
        reused.write_bytes(b"old")
        os.utime(reused, (time.time() - 3600, time.time() - 3600))
        main(["fit", *tiny_args(image_tree, "--cache_features.enabled", "false", epochs=2), "--ckpt_path", "last"])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not dead.exists() and not reused.exists()
    assert own.read_bytes() == b"a write in progress" and all(p.read_text() == "not ours" for p in unrelated)
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1
