"""Hostile image trees: symlink loops, unreadable folders, Unicode forms and separators in names (issue 13)."""

from __future__ import annotations

import csv
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_transfer.cli import main
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.data.images import BadImageError
from lit_transfer.data.splits import Sample, manifest_hash

SMALL = {"image_size": 32, "batch_size": 4, "num_workers": 0}


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    pixels[..., value % 3] = 250  # the class colour, so a tiny model has something to learn
    Image.fromarray(pixels).save(path)
    return path


def _fit_args(root: Path, epochs: int, *extra: str) -> list[str]:
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
        "--experiment", "hostile",
        *extra,
    ]  # fmt: skip


def _run(base: Path) -> Path:
    return base / "runs" / "hostile" / "version_0"


# --------------------------------------------------------------------------- item 8: symlink loops


def test_loop_to_the_data_root_files_nothing_of_other_classes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    zero = [_png(root / "zero" / f"z{i}.png", 0) for i in range(4)] + [_png(root / "zero" / "deep" / "z9.png", 0)]
    for cls, value in (("one", 1), ("two", 2)):
        for i in range(5):
            _png(root / cls / f"{cls}{i}.png", value)
    os.symlink("..", root / "zero" / "up")  # zero/up -> the data root: every class again, below zero

    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, **SMALL)
    with pytest.warns(UserWarning, match=r"not followed.*'up'"):
        dm.setup("fit")

    files_of = {name: sorted(s.path for s in dm.samples if s.label == i) for i, name in enumerate(dm.class_names)}
    assert sorted(os.path.realpath(root / p) for p in files_of["zero"]) == sorted(os.path.realpath(p) for p in zero)
    assert all(not p.startswith("zero/up/") for p in files_of["zero"])
    real = [os.path.realpath(root / s.path) for s in dm.samples]
    assert len(real) == len(set(real)) == 15, "a real file is listed twice in the data set"


def test_link_into_another_class_keeps_the_file_in_its_own_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls, value in (("a", 0), ("b", 1)):
        for i in range(3):
            _png(root / cls / "sub" / f"{cls}{i}.png", value)
    os.symlink(root / "b" / "sub", root / "a" / "borrowed")  # a/borrowed -> b/sub

    dm = ImageFolderDataModule(root=str(root), val_fraction=0.0, **SMALL)
    with pytest.warns(UserWarning, match="more than one class folder"):
        dm.setup("fit")
    assert sorted((s.path, dm.class_names[s.label]) for s in dm.samples) == sorted(
        [(f"a/sub/a{i}.png", "a") for i in range(3)] + [(f"b/sub/b{i}.png", "b") for i in range(3)]
    )


# --------------------------------------------------------------------------- item 9: unreadable folders


def _tree_with_locked_folder(root: Path) -> Path:
    for cls, value in (("x", 0), ("y", 1)):
        for i in range(10):
            _png(root / cls / f"{cls}{i}.png", value)
    locked = root / "x" / "locked"
    for i in range(20):
        _png(locked / f"l{i}.png", 0)
    return locked


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make listing ``folder`` fail as chmod 000 does for a user other than root."""
    original = os.scandir

    def scandir(path: object = ".") -> object:
        if os.path.realpath(os.fspath(path)) == os.path.realpath(folder):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return original(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_subfolder_is_reported_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_tmp: Path
) -> None:
    root = tmp_path / "data"
    locked = _tree_with_locked_folder(root)
    _deny(monkeypatch, locked)
    with pytest.warns(UserWarning, match=r"cannot be read.*locked"):
        main(["fit", *_fit_args(root, 1)])
    with open(_run(in_tmp) / "bad_images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(locked)]
    assert "Permission" in rows[0]["reason"]


def test_unreadable_subfolder_is_an_error_under_bad_images_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    locked = _tree_with_locked_folder(root)
    _deny(monkeypatch, locked)
    dm = ImageFolderDataModule(root=str(root), bad_images="error", **SMALL)
    with pytest.raises(BadImageError, match="locked"):
        dm.setup("fit")


def test_unreadable_folder_in_predict_dir_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    locked = _tree_with_locked_folder(root)
    _deny(monkeypatch, locked)
    dm = ImageFolderDataModule(root=str(root), predict_dir=str(root / "x"), **SMALL)
    with pytest.warns(UserWarning, match=r"cannot be read.*locked"):
        dm.setup("predict")
    assert [b.path for b in dm.bad_found] == [str(locked)] and len(dm.predict_paths) == 10


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading"
)
def test_unreadable_subfolder_real_permissions(tmp_path: Path) -> None:
    root = tmp_path / "data"
    locked = _tree_with_locked_folder(root)
    locked.chmod(0)
    try:
        dm = ImageFolderDataModule(root=str(root), **SMALL)
        with pytest.warns(UserWarning, match="locked"):
            dm.setup("fit")
        assert [b.path for b in dm.bad_found] == [str(locked)]
        assert len(dm.samples) == 20
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- item 11: NFD renamed to NFC


def test_resume_after_renaming_nfd_to_nfc(tmp_path: Path, in_tmp: Path) -> None:
    root = tmp_path / "data"
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    assert nfd != "caf\u00e9"
    for cls, value in ((nfd, 0), ("plain", 1)):
        for i in range(8):
            _png(root / cls / unicodedata.normalize("NFD", f"cr\u00e8me_{i}.png"), value)
    main(["fit", *_fit_args(root, 1)])

    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):  # deepest first: files, then folders
        nfc = path.with_name(unicodedata.normalize("NFC", path.name))
        if nfc != path:
            path.rename(nfc)
    assert all(unicodedata.is_normalized("NFC", str(p)) for p in root.rglob("*"))

    main(["fit", *_fit_args(root, 2), "--ckpt_path", "last"])
    ckpt = torch.load(_run(in_tmp) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1


def test_manifest_hash_ignores_unicode_form() -> None:
    names = ["caf\u00e9"]
    nfc = [Sample("caf\u00e9/cr\u00e8me.png", 0, "train")]
    nfd = [Sample(unicodedata.normalize("NFD", s.path), s.label, s.split) for s in nfc]
    assert manifest_hash(nfc, names) == manifest_hash(nfd, names)


# --------------------------------------------------------------------------- item 13: separators in names

ODD_FILES = ("new\nline", "tab\there", "com,ma", 'dq"uote', "sq'uote")


def test_separators_in_names_survive_checkpoints(tmp_path: Path, in_tmp: Path) -> None:
    root = tmp_path / "data"
    for cls, value in (("a\tb", 0), ("plain", 1)):
        for i, stem in enumerate(ODD_FILES * 2):
            _png(root / cls / f"{stem}{i}.png", value)
    main(["fit", *_fit_args(root, 1)])
    run = _run(in_tmp)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain types only
    assert ckpt["epoch"] == 0

    main(["fit", *_fit_args(root, 2), "--ckpt_path", "last"])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    main(["validate", *_fit_args(root, 2), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    main(["predict", *_fit_args(root, 2, "--data.predict_dir", str(root / "plain")), "--ckpt_path", "last"])

    dm = ImageFolderDataModule(root=str(root), val_fraction=0.25, **SMALL)
    dm.setup("fit")
    with open(run / "split_manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["path"], r["class"], r["split"]) for r in rows} == {
        (s.path, dm.class_names[s.label], s.split) for s in dm.samples
    }
    assert any("\n" in r["path"] for r in rows) and any(r["class"] == "a\tb" for r in rows)


def test_old_checkpoint_format_still_loads(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls, value in (("a", 0), ("b", 1)):
        for i in range(4):
            _png(root / cls / f"{cls}{i}.png", value)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.25, **SMALL)
    dm.setup("fit")
    old = "\n".join(f"{s.split}\t{dm.class_names[s.label]}\t{s.path}" for s in dm.samples)
    fresh = ImageFolderDataModule(root=str(root), val_fraction=0.25, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict({"class_names": list(dm.class_names), "manifest": old})
    assert fresh.samples == dm.samples


def test_unreadable_class_folder_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = tmp_path / "data"
    _tree_with_locked_folder(root)
    _deny(monkeypatch, root / "y")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", *_fit_args(root, 1)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "cannot be read" in err and "Permission denied" in err, err[-2000:]
    assert f"chmod -R u+rX {root / 'y'}" in err and "holds no image" not in err
