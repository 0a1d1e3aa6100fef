"""Generated images for the RotNet tests: strongly asymmetric smooth images and unlabeled noise folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def asymmetric_image(height: int = 64, width: int = 80) -> np.ndarray:
    """A smooth RGB image that no rotation or flip maps onto itself: an off-centre blob, a bar and a ramp.

    Smooth (blurred shapes, no hard edges), so any two accurate rotations of it agree to a few grey levels and a
    wrong angle or direction differs by tens of them.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    blob = np.exp(-(((x - cx - 0.22 * width) ** 2) + (y - cy + 0.18 * height) ** 2) / (2 * (0.08 * width) ** 2))
    bar = np.exp(-((y - cy - 0.15 * height) ** 2) / (2 * (0.05 * height) ** 2)) * (x < cx + 0.1 * width)
    ramp = (x + 0.5 * y) / (width + 0.5 * height)
    rgb = np.stack([200 * blob + 30, 180 * bar + 40, 150 * ramp + 50], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gaussian RGB noise around mid-grey."""
    return np.clip(rng.normal(128, 48, (height, width, 3)), 0, 255).astype(np.uint8)


def make_unlabeled(root: Path, count: int = 10, seed: int = 0, size: tuple[int, int] = (48, 60)) -> Path:
    """``count`` noise PNGs below ``root``, half in a sub-folder (which RotNet must ignore as a class)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ("sub" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise_image(rng, *size)).save(folder / f"img_{i:03d}.png")
    return root
