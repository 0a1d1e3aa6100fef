"""Fixtures of the RotNet tests: unlabeled image folders and a strongly asymmetric smooth image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from rotnet_images import asymmetric_image, make_unlabeled


@pytest.fixture
def unlabeled(tmp_path: Path) -> Path:
    """Ten 48x60 noise PNGs, half of them in ``sub/``."""
    return make_unlabeled(tmp_path / "unlabeled")


@pytest.fixture
def unlabeled_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make unlabeled folders below ``tmp_path``: ``unlabeled_factory("name", count=..., seed=...)``."""

    def factory(name: str, **kwargs: object) -> Path:
        return make_unlabeled(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def asymmetric_tree(tmp_path: Path) -> Path:
    """A folder with one strongly asymmetric, smooth, non-square image."""
    root = tmp_path / "asym"
    root.mkdir()
    Image.fromarray(asymmetric_image()).save(root / "asym.png")
    return root
