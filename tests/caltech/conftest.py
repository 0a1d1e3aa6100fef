"""Fixtures of the Caltech101, data card, reports and sampler tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from caltech_tree import caltech_files, write_tree


@pytest.fixture
def caltech_factory(tmp_path: Path) -> Callable[..., Path]:
    """``caltech_factory("name", layout="archive"|"torchvision"|"categories", reverse=False)`` → the root to pass."""

    def factory(name: str = "caltech", layout: str = "archive", reverse: bool = False) -> Path:
        files = caltech_files()
        order = sorted(files, reverse=reverse)
        root = tmp_path / name
        categories = {
            "archive": root / "101_ObjectCategories",
            "torchvision": root / "caltech101" / "101_ObjectCategories",
            "categories": root / "101_ObjectCategories",
        }[layout]
        write_tree(categories, files, order)
        return categories if layout == "categories" else root

    return factory
