"""File discovery and safe decoding: one place where a path becomes an RGB image."""

from __future__ import annotations

import math
import os
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple

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


class ImageFile(NamedTuple):
    """One image found by :func:`walk_images`: its path relative to the walked folder and its real path."""

    rel: str
    real: str
    via_link: bool  # reached through a symbolic link (of the file or of a folder above it)


class Walk(NamedTuple):
    """What :func:`walk_images` found: images (one name per real file), links not followed, unreadable folders."""

    images: list[ImageFile]
    loops: list[tuple[str, str]]  # (link relative to the folder, the real folder it leads to)
    aliases: list[tuple[str, str]]  # (name kept, other name of the same file)
    unreadable: list[tuple[str, str]]  # (folder, reason)


_UNREADABLE: ContextVar[list[tuple[str, str]] | None] = ContextVar("lit_transfer_unreadable_folders", default=None)


@contextmanager
def collect_unreadable() -> Iterator[list[tuple[str, str]]]:
    """While active, :func:`find_images` appends folders it cannot list, as ``(folder, reason)``, instead of warning."""
    found: list[tuple[str, str]] = []
    token = _UNREADABLE.set(found)
    try:
        yield found
    finally:
        _UNREADABLE.reset(token)


def report_unreadable(folders: Sequence[tuple[str, str]]) -> None:
    """Hand unreadable folders to the active :func:`collect_unreadable`, or warn naming them."""
    sink = _UNREADABLE.get()
    if sink is not None:
        sink.extend(folders)
    elif folders:
        listing = "; ".join(f"{path} ({reason})" for path, reason in folders[:5])
        warnings.warn(f"{len(folders)} folder(s) cannot be read and their images are left out: {listing}", stacklevel=3)


def walk_images(folder: str | Path, extensions: Iterable[str] = IMG_EXTENSIONS) -> Walk:
    """Every image file below ``folder``, each real file once, following symbolic links safely.

    Real folders are walked before linked ones, and of several names for one file the one reached without a link
    (then the first in sorted order) is kept, so the names never depend on the listing order. A link to a folder
    already walked, or to ``folder`` itself or one of its ancestors (a loop), is not followed. Folders that cannot
    be listed are returned, not raised.
    """
    folder = Path(folder)
    extensions = tuple(extensions)
    top_real = os.path.realpath(folder)
    blocked = {top_real, *map(str, Path(top_real).parents)}
    visited: set[str] = set()
    candidates: dict[str, list[tuple[bool, str]]] = {}
    loops: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    # (path on disk, path relative to folder, real path, reached through a link); links wait until real folders are done
    pending: list[tuple[str, str, str, bool]] = [(str(folder), "", top_real, False)]
    linked: list[tuple[str, str, str, bool]] = []
    while pending or linked:
        dirpath, rel_dir, real_dir, via_link = pending.pop() if pending else linked.pop(0)
        if real_dir in visited or (rel_dir and real_dir in blocked):
            loops.append((rel_dir, real_dir))
            continue
        visited.add(real_dir)
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            unreadable.append((dirpath, f"unreadable folder: {type(err).__name__}: {err.strerror or err}"))
            continue
        subdirs = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link, is_dir = entry.is_symlink(), entry.is_dir()
            except OSError:
                continue
            if is_dir:
                real = os.path.realpath(entry.path) if is_link else os.path.join(real_dir, entry.name)
                subdirs.append((entry.path, rel, real, via_link or is_link))
            elif is_image_file(entry.name, extensions):
                real = os.path.realpath(entry.path) if is_link else os.path.join(real_dir, entry.name)
                candidates.setdefault(real, []).append((via_link or is_link, rel))
        pending += [d for d in reversed(subdirs) if not d[3]]  # popped from the end: walked in sorted order
        linked += sorted(d for d in subdirs if d[3])
    images, aliases = [], []
    for real, names in candidates.items():
        names.sort()
        images.append(ImageFile(names[0][1], real, names[0][0]))
        aliases += [(names[0][1], rel) for _, rel in names[1:]]
    return Walk(sorted(images), sorted(loops), sorted(aliases), unreadable)


def warn_links(folder: str | Path, walk: Walk) -> None:
    """One warning for the links :func:`walk_images` did not follow, one for images reachable by several names."""
    if walk.loops:
        link, real = walk.loops[0]
        warnings.warn(
            f"{len(walk.loops)} symbolic link(s) below {str(folder)!r} lead to a folder already scanned or to one "
            f"containing it (a loop) and are not followed (e.g. {link!r} -> {real!r})",
            stacklevel=3,
        )
    if walk.aliases:
        kept, other = walk.aliases[0]
        warnings.warn(
            f"{len(walk.aliases)} image(s) below {str(folder)!r} are reachable through more than one path (symbolic "
            f"links); each is used once, under its first name (e.g. {other!r} is {kept!r})",
            stacklevel=3,
        )


def find_images(folder: str | Path, extensions: Iterable[str] = IMG_EXTENSIONS) -> list[str]:
    """All image files below ``folder`` as sorted POSIX paths relative to it.

    Hidden folders are skipped, links are followed once and files are de-duplicated by their real path, so a
    symlink loop can neither hang the scan nor count an image twice; links leading back to ``folder`` or above are
    never followed. Folders that cannot be read are reported (see :func:`collect_unreadable`), not silently dropped.
    """
    walk = walk_images(folder, extensions)
    warn_links(folder, walk)
    report_unreadable(walk.unreadable)
    return [image.rel for image in walk.images]


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
