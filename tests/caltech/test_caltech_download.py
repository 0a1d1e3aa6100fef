"""Caltech101 ``download: true``: into a temporary folder, renamed into place only when complete; failures say why.

torchvision's Caltech101 class is replaced by fakes that behave like it (create ``<given root>/caltech101/``, then
fail midway or extract a tiny tree); no test opens a network connection.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torchvision.datasets
from caltech_tree import CATEGORIES, CLASSES, caltech_files, write_tree

from lit_transfer.cli import main
from lit_transfer.data.caltech101 import Caltech101DataModule

SMALL = {"image_size": 32, "batch_size": 4, "num_workers": 0}
ARCHIVE_HOST = "https://data.caltech.edu/"  # where torchvision downloads the archive from
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "caltech101_vgg16_frozen.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection fails the test."""

    def no_connect(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_connect)


def fake_torchvision(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes] | None = None, error: BaseException | None = None
) -> list[Path]:
    """Replace torchvision's Caltech101 with a fake; returns the roots it was given.

    Like torchvision it creates ``<root>/caltech101/`` and a partial archive there; then it raises ``error``, or
    extracts ``files`` below ``<root>/caltech101/101_ObjectCategories`` and removes the archive.
    """
    calls: list[Path] = []

    def fake(root: str, download: bool = False) -> None:
        assert download
        calls.append(Path(root))
        folder = Path(root) / "caltech101"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "caltech-101.zip").write_bytes(b"PK\x03\x04 half an archive")
        if error is not None:
            raise error
        write_tree(folder / "101_ObjectCategories", files if files is not None else caltech_files())
        (folder / "Annotations").mkdir()
        (folder / "caltech-101.zip").unlink()

    monkeypatch.setattr(torchvision.datasets, "Caltech101", fake)
    return calls


def user_root(tmp_path: Path) -> Path:
    """A root that already holds the user's own files, which no download may touch (no folder: it would be a class)."""
    root = tmp_path / "data"
    (root / ".mine").mkdir(parents=True)
    (root / ".mine" / "notes.txt").write_text("keep me\n")
    (root / "readme.txt").write_text("mine too\n")
    return root


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Relative path → bytes (``None`` for folders) of everything below ``folder``."""
    return {
        p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (urllib.error.URLError(OSError(-3, "Temporary failure in name resolution")), "URLError"),
        (RuntimeError("File not found or corrupted."), "File not found or corrupted."),  # torchvision's md5 check
        (zipfile.BadZipFile("File is not a zip file\nsecond line"), "BadZipFile: File is not a zip file"),
    ],
)
def test_failed_download_leaves_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, reason: str
) -> None:
    root = user_root(tmp_path)
    before = snapshot(root)
    calls = fake_torchvision(monkeypatch, error=error)
    with pytest.raises(ValueError) as err:
        Caltech101DataModule(root=str(root), download=True, **SMALL)
    message = str(err.value)
    assert message.startswith("downloading Caltech101 failed: ") and reason in message
    assert "second line" not in message  # only the underlying error's first line
    assert ARCHIVE_HOST in message and repr(str(root / "caltech101")) in message
    assert "network" in message and "data.init_args.root" in message
    assert str(Path("caltech101") / "101_ObjectCategories") in message  # where a hand-extracted copy goes
    # torchvision worked in a hidden folder beside the target, which is gone; the user's files are as they were
    assert len(calls) == 1 and calls[0].parent == root and calls[0].name.startswith(".")
    assert snapshot(root) == before


def test_failed_download_into_a_new_root_removes_the_root_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_torchvision(monkeypatch, error=urllib.error.URLError("timed out"))
    with pytest.raises(ValueError, match="downloading Caltech101 failed: URLError"):
        Caltech101DataModule(root=str(tmp_path / "new" / "data"), download=True, **SMALL)
    assert os.listdir(tmp_path) == []


def test_interrupted_download_removes_its_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_root(tmp_path)
    before = snapshot(root)
    fake_torchvision(monkeypatch, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert snapshot(root) == before


def test_download_with_an_empty_category_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_root(tmp_path)
    before = snapshot(root)
    files = {k: v for k, v in caltech_files().items() if not k.startswith("accordion/")}
    files["accordion/notes.txt"] = b"no images here\n"  # a category folder cut short while extracting
    fake_torchvision(monkeypatch, files=files)
    with pytest.raises(ValueError, match=r"downloading Caltech101 failed: 1 of 5 .*hold no images \(accordion\)"):
        Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert snapshot(root) == before


def test_download_is_renamed_into_place_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_root(tmp_path)
    before = snapshot(root)
    calls = fake_torchvision(monkeypatch)
    dm = Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert len(calls) == 1 and calls[0] != root and calls[0].parent == root  # not straight into root
    final = root / "caltech101" / "101_ObjectCategories"
    assert dm.categories_dir == final and dm.class_names == CLASSES
    assert sorted(os.listdir(root)) == [".mine", "caltech101", "readme.txt"]  # no temporary folder remains
    assert sorted(os.listdir(root / "caltech101")) == ["101_ObjectCategories", "Annotations"]
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("caltech101")} == before
    dm.setup("fit")
    assert len(dm.samples) == sum(CATEGORIES[c] for c in CLASSES) + 1
    # the next run finds the data in place and downloads nothing
    again = Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert len(calls) == 1 and again.categories_dir == final


def test_download_moves_an_incomplete_earlier_download_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_root(tmp_path)
    leftover = root / "caltech101"
    (leftover / "caltech-101").mkdir(parents=True)  # what an interrupted torchvision download leaves
    (leftover / "caltech-101.zip").write_bytes(b"PK\x03\x04 cut")
    calls = fake_torchvision(monkeypatch)
    with pytest.warns(UserWarning, match="incomplete Caltech101 download"):
        dm = Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert len(calls) == 1 and dm.class_names == CLASSES
    assert dm.categories_dir == root / "caltech101" / "101_ObjectCategories"
    aside = [p for p in root.iterdir() if p.name.startswith("caltech101.incomplete-")]
    assert len(aside) == 1 and (aside[0] / "caltech-101.zip").read_bytes() == b"PK\x03\x04 cut"  # kept, not deleted
    assert not [p for p in root.iterdir() if p.name.startswith(".building")]


@pytest.mark.parametrize("leftover", ["caltech101/101_ObjectCategories", "caltech101"])
def test_leftover_empty_download_is_named_without_download(tmp_path: Path, leftover: str) -> None:
    root = user_root(tmp_path)
    (root / leftover).mkdir(parents=True)
    (root / "caltech101" / "caltech-101.zip").write_bytes(b"PK\x03\x04 cut")
    before = snapshot(root)
    with pytest.raises(FileNotFoundError) as err:
        Caltech101DataModule(root=str(root), **SMALL)
    message = str(err.value)
    assert message.startswith(f"{str(root / 'caltech101')!r} looks like an incomplete Caltech101 download")
    assert "Delete it" in message and "--data.init_args.download true" in message
    assert snapshot(root) == before  # reported, never deleted


def test_leftover_empty_categories_folder_is_named(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    for category in CATEGORIES:  # an extraction cut short: the category folders, no images yet
        (root / "101_ObjectCategories" / category).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="101_ObjectCategories' looks like an incomplete Caltech101 download"):
        Caltech101DataModule(root=str(root), **SMALL)


def test_cli_reports_a_failed_download_as_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    root = user_root(tmp_path)
    before = snapshot(root)
    fake_torchvision(monkeypatch, error=urllib.error.URLError(OSError(101, "Network is unreachable")))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIG), "--data.init_args.root", str(root)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit_transfer: configuration error: downloading Caltech101 failed: URLError" in err
    assert "Network is unreachable" in err and ARCHIVE_HOST in err and "data.init_args.root" in err
    assert "Traceback" not in err
    assert snapshot(root) == before


def test_cli_names_a_leftover_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = user_root(tmp_path)
    (root / "caltech101" / "101_ObjectCategories").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["stats", "--config", str(CONFIG), "--data.init_args.root", str(root), "--data.init_args.download=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{str(root / 'caltech101')!r} looks like an incomplete Caltech101 download" in err
    assert (root / "caltech101" / "101_ObjectCategories").is_dir()


def test_a_copy_placed_meanwhile_by_another_process_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = user_root(tmp_path)
    calls = fake_torchvision(monkeypatch)
    other = caltech_files(seed=1)

    def racing(root_given: str, download: bool = False) -> None:  # another rank finishes first, then this one
        write_tree(root / "caltech101" / "101_ObjectCategories", other)
        torchvision_fake(root_given, download)

    torchvision_fake = torchvision.datasets.Caltech101
    monkeypatch.setattr(torchvision.datasets, "Caltech101", racing)
    dm = Caltech101DataModule(root=str(root), download=True, **SMALL)
    assert len(calls) == 1 and dm.categories_dir == root / "caltech101" / "101_ObjectCategories"
    assert (dm.categories_dir / "Faces" / "image_0001.jpg").read_bytes() == other["Faces/image_0001.jpg"]
    assert sorted(os.listdir(root)) == [".mine", "caltech101", "readme.txt"]  # this process's copy is discarded
