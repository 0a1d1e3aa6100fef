"""Bad images, bad configs, interrupted runs and untrusted files, met where a user meets them: the CLI."""

from __future__ import annotations

import csv
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from lit_transfer.cli import loader_hint, main
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier


def args_for(root: Path, *extra: str, epochs: int = 1, experiment: str = "rel") -> list[str]:
    # no loader workers and no progress bar, only to keep these many runs short; tests/userpath runs the same paths
    # (resume, kill -9, DDP) with both on
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--data.val_fraction", "0.25",
        "--model", "TransferClassifier",
        "--model.backbone", "smallcnn",
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--experiment", experiment,
        *extra,
    ]  # fmt: skip


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lit_transfer", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def main_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process and return its exit status and stderr (faster than a subprocess: no re-import)."""
    try:
        main(args)
    except SystemExit as exit_info:
        return int(exit_info.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def png_bomb(path: Path, width: int = 40000, height: int = 40000) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (valid CRC, so only the size gives it away)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    data += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    path.write_bytes(data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def add_bad_files(root: Path) -> set[str]:
    """Put every kind of trouble into a class-folder tree; return the paths that must be reported as bad."""
    from PIL import Image

    red = root / "red"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(red / "full.jpg", quality=95)
    data = (red / "full.jpg").read_bytes()
    (red / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (red / "random.jpg").write_bytes(os.urandom(2048))
    (red / "empty.png").write_bytes(b"")
    png_bomb(root / "green" / "bomb.png")
    # not images at all, or not data: ignored silently
    (red / ".DS_Store").write_bytes(b"\x00\x01")
    (red / "Thumbs.db").write_bytes(b"\x00\x01")
    (red / "notes.txt").write_text("labels are folder names")
    (red / "._full.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(data)
    return {"red/truncated.jpg", "red/random.jpg", "red/empty.png", "green/bomb.png"}


def test_bad_images_are_skipped_and_reported(tree_factory, in_tmp: Path) -> None:
    root = tree_factory("bad", per_class=12)
    expected = add_bad_files(root)
    # a worker process decodes, so a decode failure must not kill the DataLoader
    main(["fit", *args_for(root, "--data.max_bad_fraction", "0.2", "--data.num_workers", "1", epochs=2)])
    run = in_tmp / "runs" / "rel" / "version_0"
    with open(run / "bad_images.csv") as f:
        rows = list(csv.DictReader(f))
    reported = {Path(r["path"]).relative_to(root).as_posix() for r in rows}
    assert reported == expected  # the truncated JPEG is caught at decode time, the rest at the header check
    reasons = {Path(r["path"]).name: r["reason"] for r in rows}
    assert "bomb" in reasons["bomb.png"] and "empty" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert all(r["split"] in {"train", "val", "test"} for r in rows)
    with open(run / "split_manifest.csv") as f:
        classes = {r["class"] for r in csv.DictReader(f)}
    assert classes == {"red", "green", "blue"}  # no '.ipynb_checkpoints' class
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_bad_image_policies_stop_before_training(tree_factory, in_tmp: Path, capsys) -> None:
    root = tree_factory("bad", per_class=12)
    add_bad_files(root)
    code, err = main_exit(["fit", *args_for(root, "--data.bad_images", "error")], capsys)
    assert code == 2 and "bomb.png" in err and "bad_images: skip" in err
    code, err = main_exit(["fit", *args_for(root)], capsys)  # 3 of 39 files > the default 5 %
    assert code == 2 and "max_bad_fraction" in err and "random.jpg" in err
    assert not list(in_tmp.glob("runs/*/version_*/checkpoints/*.ckpt"))


def test_config_mistakes_exit_before_training(tree_factory, tmp_path: Path, monkeypatch, capsys) -> None:
    root = tree_factory("data", per_class=6)
    wrong_type = run_cli("fit", *args_for(root, "--data.batch_size", "lots"), cwd=tmp_path)
    assert wrong_type.returncode == 2 and "batch_size" in wrong_type.stderr
    monkeypatch.chdir(tmp_path)
    (root / "purple").mkdir()
    code, err = main_exit(["fit", *args_for(root)], capsys)
    assert code == 2 and "purple" in err and "Traceback" not in err
    assert not list(tmp_path.glob("runs/*/version_*/checkpoints/*.ckpt"))


def final_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_resume_is_bitwise_exact(tree_factory, in_tmp: Path) -> None:
    root = tree_factory("data", per_class=10)
    # loader workers, as by default: without them this test missed issue 12 (workers took the resumed epoch's first
    # indices before the sampler knew its epoch). args_for's smallcnn, batch size 8, progress bar and model summary
    # off are kept for speed; tests/userpath/test_resume.py runs the real CLI with every default
    extra = ("--model.hidden_dims", "[16]", "--model.dropout", "0.5", "--data.augmentation", "standard",
             "--data.num_workers", "2")  # fmt: skip
    main(["fit", *args_for(root, *extra, epochs=3, experiment="straight")])
    main(["fit", *args_for(root, *extra, epochs=1, experiment="resumed")])
    main(["fit", *args_for(root, *extra, epochs=3, experiment="resumed"), "--ckpt_path", "last"])
    straight = final_weights(in_tmp / "runs/straight/version_0/checkpoints/last.ckpt")
    resumed = final_weights(in_tmp / "runs/resumed/version_0/checkpoints/last.ckpt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_truncated_newest_checkpoint_falls_back(tree_factory, in_tmp: Path) -> None:
    root = tree_factory("data", per_class=6)
    main(["fit", *args_for(root, "--checkpoint.save_top_k", "-1", epochs=2)])
    ckpts = in_tmp / "runs/rel/version_0/checkpoints"
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed mid-write by something that was not lit_transfer
    explicit = run_cli("fit", *args_for(root, epochs=3), "--ckpt_path", str(last), cwd=in_tmp)
    assert explicit.returncode == 2 and "last.ckpt" in explicit.stderr and "--ckpt_path last" in explicit.stderr
    main(["fit", *args_for(root, "--checkpoint.save_top_k", "-1", epochs=3), "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    cmd = [sys.executable, "-m", "lit_transfer", "fit", *args_for(root, "--model.backbone", "resnet18", epochs=4)]
    rng = random.Random(0)
    runs = tmp_path / "runs/rel"

    def files() -> list[Path]:  # of every run folder: a run killed before its first checkpoint leaves none
        return list(runs.glob("version_*/checkpoints/*"))

    for _ in range(2):
        resume = any(p.suffix == ".ckpt" for p in files())
        proc = subprocess.Popen(
            [*cmd, "--ckpt_path", "last"] if resume else cmd,
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # wait for a checkpoint write to start, then kill at a random moment around it
        deadline = time.monotonic() + 120
        seen = len(files())
        while time.monotonic() < deadline and proc.poll() is None:
            if len(files()) > seen:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in files():
            assert path.suffix == ".ckpt" or path.name.startswith("."), path
            if path.suffix == ".ckpt":
                assert torch.load(path, weights_only=True)["state_dict"], path
    done = subprocess.run([*cmd, "--ckpt_path", "last"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # a run killed before its first checkpoint reached the disk leaves none, and the next run starts a new version
    last = max((tmp_path / "runs/rel").glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(last, weights_only=True)["epoch"] == 3


def test_sigterm_saves_and_exits_143(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit_transfer", "fit", *args_for(root, epochs=500)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ckpts = tmp_path / "runs/rel/version_0/checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpts / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert torch.load(ckpts / "interrupted.ckpt", weights_only=True)["state_dict"]


class NaNOnFirstFile(TransferClassifier):
    """Produces a NaN loss for the batch holding dataset item 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits * float("nan") if self._poison else logits

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._poison = bool((batch[2] == 0).any())
        return super().training_step(batch, batch_idx)


def nan_fit(root: Path, tmp_path: Path, policy: str) -> tuple[NaNOnFirstFile, ImageFolderDataModule]:
    import lightning.pytorch as pl

    from lit_transfer.callbacks import RunCheckpoint

    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0)
    model = NaNOnFirstFile(num_classes=3, class_names=dm.class_names, backbone="smallcnn", on_nonfinite_loss=policy)
    model._poison = False
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RunCheckpoint(dirpath=tmp_path / "ckpts", monitor="val_acc", mode="max", save_last=True)],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return model, dm


def test_non_finite_loss_stops_naming_files(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    with pytest.raises(FloatingPointError) as err:
        nan_fit(root, tmp_path, "error")
    dm = ImageFolderDataModule(root=str(root), image_size=32, num_workers=0)
    dm.setup("fit")
    assert dm.paths_of("train", [0])[0] in str(err.value)
    assert not list((tmp_path / "ckpts").glob("*.ckpt")) if (tmp_path / "ckpts").exists() else True


def test_non_finite_loss_skip_counts_batches(tree_factory, tmp_path: Path) -> None:
    model, _ = nan_fit(tree_factory("data", per_class=6), tmp_path, "skip")
    assert model.skipped_batches == 2  # item 0 is in one batch per epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_malicious_checkpoint_is_refused(tree_factory, tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    root = tree_factory("data", per_class=6)
    monkeypatch.chdir(tmp_path)
    for args in (["--ckpt_path", str(evil)], ["--model.weights", str(evil)]):
        code, err = main_exit(["fit", *args_for(root), *args], capsys)
        assert code == 2, err[-2000:]
        assert "evil.ckpt" in err and "weights_only" in err
    assert not marker.exists()


def test_changed_data_on_resume_is_an_error(tree_factory, in_tmp: Path, capsys) -> None:
    root = tree_factory("data", per_class=6)
    main(["fit", *args_for(root)])
    (root / "red" / "img_000.png").unlink()
    code, err = main_exit(["fit", *args_for(root, epochs=2), "--ckpt_path", "last"], capsys)
    assert code == 2 and "data changed" in err and "red/img_000.png" in err, err[-2000:]


def test_loader_hints_say_what_to_change() -> None:
    assert "shm-size" in loader_hint("DataLoader worker (pid 12) is killed by signal: Bus error.")
    assert "ulimit" in loader_hint("OSError: [Errno 24] Too many open files")
    assert loader_hint("something else") is None
