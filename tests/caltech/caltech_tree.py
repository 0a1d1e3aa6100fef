"""Tiny trees in Caltech 101's archive layout (``101_ObjectCategories/<category>/image_NNNN.jpg``) for the tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Category → image count. Sorted as the file system sorts names: upper case first.
CATEGORIES = {"Faces": 6, "accordion": 9, "airplanes": 12, "BACKGROUND_Google": 3, "Faces_easy": 4}
CLASSES = ["Faces", "accordion", "airplanes"]  # without the two excluded by default
GRAY = "accordion/image_0002.jpg"


def caltech_files(seed: int = 0) -> dict[str, bytes]:
    """Relative path below ``101_ObjectCategories`` → file bytes: JPEGs of varying sizes, one grayscale, stray files."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for category, n in CATEGORIES.items():
        for i in range(1, n + 1):
            rel = f"{category}/image_{i:04d}.jpg"
            shape = (24 + 2 * i, 40) if rel != GRAY else (30, 36)
            pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            image = Image.fromarray(pixels[..., 0] if rel == GRAY else pixels)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG")
            files[rel] = buffer.getvalue()
    files["notes.txt"] = b"downloaded from data.caltech.edu\n"
    files["airplanes/notes.txt"] = b"stray\n"
    files["airplanes/image_0001 copy.jpg"] = files["airplanes/image_0001.jpg"]
    return files


def write_tree(base: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    """Write ``files`` below ``base`` in ``order`` (creation order differs, content does not); returns ``base``."""
    for rel in order or list(files):
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return base
