"""Build the offline demo data set: scikit-learn's scanned handwritten digits as an image folder.

``python -m lit_transfer.demo DIR`` writes ``DIR/<digit>/<n>.png`` (1,797 real scans, 10 classes, upscaled from
8x8 to 32x32). scikit-learn ships the scans, so the demo runs without network access.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def build_digits(out_dir: str | Path, size: int = 32) -> int:
    """Write the digits as ``size``-pixel PNGs into class folders; returns how many images there are."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit("the demo data needs scikit-learn: pip install 'lit-transfer[demo]'") from err
    digits = load_digits()
    out = Path(out_dir)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:04d}.png"
        if target.exists():
            continue
        img = Image.fromarray(np.uint8(np.rint(pixels * 255 / 16)), "L").resize((size, size), Image.Resampling.BICUBIC)
        img.save(target)
    return len(digits.target)


def main() -> None:
    """Command line: build the digits folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="data/digits", help="where to write the image folder")
    args = parser.parse_args()
    n = build_digits(args.out_dir)
    print(f"demo data: {n} digit scans in {args.out_dir}")


if __name__ == "__main__":
    main()
