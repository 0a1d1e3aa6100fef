"""File discovery and safe decoding: one place where a path becomes an RGB image."""

from __future__ import annotations

import math
import os
import unicodedata
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Composite transparent pixels on a fixed colour so hidden RGB under alpha=0 never leaks into training.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)


class BadImageError(Exception):
    """An image file that cannot be used: empty, not an image, truncated, or too large to decode safely."""


def check_image_header(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, judged from its header alone, or ``None`` when it looks fine.

    No pixel is decoded: this catches empty files, files that are not images and decompression bombs (more pixels
    than Pillow's ``Image.MAX_IMAGE_PIXELS``); a truncated file is only found when it is decoded.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError as err:
        return f"possible decompression bomb: {err}"
    except Exception as err:
        return f"not a readable image: {type(err).__name__}: {err}"
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return f"possible decompression bomb: {width}x{height} pixels, more than the limit of {limit}"
    return None


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden or tool state (``.git``, ``.ipynb_checkpoints``, macOS ``._x``)."""
    return name.startswith(".") or name.startswith("__")


def is_image_file(path: str | Path, extensions: Iterable[str] = IMG_EXTENSIONS) -> bool:
    """Whether ``path`` names a visible file with an image extension."""
    name = os.path.basename(path)
    return not is_hidden(name) and name.lower().endswith(tuple(extensions))


def class_dirs(root: str | Path) -> dict[str, str]:
    """Class name → folder name for the class folders under ``root``, sorted by class name.

    Class names are the folder names in Unicode NFC form, so a folder written as NFD (macOS) and the same folder
    written as NFC (Linux) give the same class name and the same class index. Hidden and tool folders never become
    classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    found: dict[str, str] = {}
    for entry in os.scandir(root):
        if entry.is_dir() and not is_hidden(entry.name):
            name = unicodedata.normalize("NFC", entry.name)
            if name in found:
                raise ValueError(
                    f"{str(root)!r} has two class folders that are the same name in different Unicode forms: "
                    f"{found[name]!r} and {entry.name!r}; merge them"
                )
            found[name] = entry.name
    return dict(sorted(found.items()))


def list_class_dirs(root: str | Path) -> list[str]:
    """Sorted class names (NFC-normalised folder names) under ``root``; see :func:`class_dirs`."""
    return list(class_dirs(root))


def find_images(folder: str | Path, extensions: Iterable[str] = IMG_EXTENSIONS) -> list[str]:
    """All image files below ``folder`` as sorted POSIX paths relative to it.

    Hidden folders are skipped, links are followed once and files are de-duplicated by their real path, so a
    symlink loop can neither hang the scan nor count an image twice.
    """
    folder = Path(folder)
    extensions = tuple(extensions)
    found: dict[str, str] = {}
    aliases: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real_dir = os.path.realpath(dirpath)
        if real_dir in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real_dir)
        # Sorted, so which of two names for one file is kept does not depend on the file system's listing order.
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if is_image_file(name, extensions):
                rel = Path(full).relative_to(folder).as_posix()
                kept = found.setdefault(os.path.realpath(full), rel)
                if kept != rel:
                    aliases.append((kept, rel))
    if aliases:
        warnings.warn(
            f"{len(aliases)} image(s) below {str(folder)!r} are reachable through more than one path (symbolic "
            f"links); each is used once, under its first name (e.g. {aliases[0][1]!r} is {aliases[0][0]!r})",
            stacklevel=2,
        )
    return sorted(found.values())


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without the traps of a bare ``convert("RGB")``.

    16-bit and 32-bit integer images are rescaled to 8 bits (``convert`` clips them, which whitens them),
    float images are scaled from their own range, and transparency is composited on ``ALPHA_BACKGROUND``.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
        else:
            lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "L", "RGB") and "transparency" in img.info:  # palette index or colour key (tRNS)
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode == "P":
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        return img
    if mode in ("LA", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open ``path`` once, apply its EXIF orientation, decode and return an RGB image.

    With ``min_side``, a JPEG is decoded at the smallest of its reduced sizes (1/2, 1/4 or 1/8, done inside the
    decoder, so much faster than decoding fully and resizing) whose shorter side is still at least ``min_side``
    pixels; other formats, and JPEGs already near that size, are decoded in full. Raises an error for truncated
    files (never grey-filled: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off) and for images above
    ``PIL.Image.MAX_IMAGE_PIXELS``, checked before decoding (Pillow only warns up to twice that).
    """
    with Image.open(path) as img:
        width, height = img.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise Image.DecompressionBombError(f"{width}x{height} pixels exceeds the limit of {limit}")
        if min_side is not None and img.format == "JPEG" and min(width, height) >= 2 * min_side:
            scale = min_side / min(width, height)  # the decoder picks the largest reduction keeping both sides >= this
            img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        img = ImageOps.exif_transpose(img)
        img.load()
        return to_rgb(img)
