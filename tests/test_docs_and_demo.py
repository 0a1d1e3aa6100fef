"""The README documents every public argument; the demo data builder makes real digit scans."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
from PIL import Image

from lit_transfer.data import BaseImageDataModule, Caltech101DataModule, ImageFolderDataModule, RotNetDataModule
from lit_transfer.demo import build_digits
from lit_transfer.models import TransferClassifier

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_documents_every_public_argument() -> None:
    # the data modules pass **kwargs on to BaseImageDataModule: its arguments are theirs too
    for cls in (TransferClassifier, BaseImageDataModule, ImageFolderDataModule, Caltech101DataModule, RotNetDataModule):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
                assert f"`{name}`" in README, f"README lacks {cls.__name__} argument {name!r}"
    for flag in ("--experiment", "--runs_dir", "--test_after_fit", "--optimizer", "--lr_scheduler", "--ckpt_path"):
        assert f"`{flag}`" in README


def test_readme_names_every_config() -> None:
    for config in (Path(__file__).parents[1] / "configs").glob("*.yaml"):
        assert f"configs/{config.name}" in README, f"README lacks a row for {config.name}"


def test_demo_digits_are_real_scans(tmp_path: Path) -> None:
    assert build_digits(tmp_path / "digits") == 1797
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert folders == [str(d) for d in range(10)]
    files = list((tmp_path / "digits").glob("*/*.png"))
    assert len(files) == 1797
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (32, 32) and img.min() == 0 and img.max() > 150  # ink on a blank background

    # the same digit class looks alike: mean images of two classes differ far more than two halves of one class
    def mean_of(digit: str, part: slice) -> np.ndarray:
        paths = sorted((tmp_path / "digits" / digit).glob("*.png"))[part]
        return np.mean([np.asarray(Image.open(p), dtype=float) for p in paths], axis=0)

    same = np.abs(mean_of("0", slice(0, 40)) - mean_of("0", slice(40, 80))).mean()
    other = np.abs(mean_of("0", slice(0, 40)) - mean_of("1", slice(0, 40))).mean()
    assert other > 3 * same
