"""Shared fixtures: tiny generated image trees and a guard that makes any weight download fail.

Many tests call the CLI in-process with ``num_workers 0`` and the progress bar off, only to be fast; the defaults a
user gets (loader workers, progress bar, separate processes, augmentation, a BatchNorm backbone) are what
``tests/userpath/`` runs, for every path those tests cover: multi-process commands, exact resume, metrics, predict.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": 0, "green": 1, "blue": 2}


def write_image(path: Path, channel: int, rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> None:
    """A noisy image whose dominant colour channel is ``channel`` (so classes are learnable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 60, (size[0], size[1], 3), dtype=np.uint8)
    pixels[..., channel] += 150
    Image.fromarray(pixels).save(path)


def make_tree(
    root: Path, per_class: int | dict[str, int] = 8, classes: Sequence[str] = tuple(COLOURS), seed: int = 0
) -> Path:
    """``root/<class>/img_NNN.png`` with ``per_class`` images per class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for name in classes:
        n = per_class[name] if isinstance(per_class, dict) else per_class
        for i in range(n):
            write_image(root / name / f"img_{i:03d}.png", COLOURS.get(name, i % 3), rng)
    return root


@pytest.fixture(scope="session")
def tree_maker() -> Callable[..., Path]:
    """:func:`make_tree` itself, for module-scoped fixtures (a test module cannot import a conftest by name)."""
    return make_tree


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """Three colour classes of eight 40x48 PNGs each."""
    return make_tree(tmp_path / "data")


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make further trees below ``tmp_path``: ``tree_factory("name", per_class=..., classes=...)``."""

    def factory(name: str = "data", **kwargs: object) -> Path:
        return make_tree(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never download: torchvision's, timm's and the Hugging Face Hub's weight loading fail loudly.

    The torch hub and Hugging Face caches live in tmp_path, and the Hub is in offline mode.
    """
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.file_download
    import timm.models._builder
    import timm.models._hub
    import torch
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a test tried to download weights")

    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    # timm binds these names at import: patch them where timm looks them up
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI is called in-process with explicit args; pytest's own argv must not look like extra arguments."""
    monkeypatch.setattr(sys, "argv", ["lit_transfer"])


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with ``tmp_path`` as the working directory (so runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
