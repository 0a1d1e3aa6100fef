"""File discovery and decoding: find_images, list_class_dirs, to_rgb and load_rgb."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_transfer.data.images import (
    ALPHA_BACKGROUND,
    check_image_header,
    find_images,
    is_image_file,
    list_class_dirs,
    load_rgb,
    to_rgb,
)

HIDDEN_COLOUR = (12, 200, 34)  # what sits under alpha=0 and must never reach the model


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _touch(path: Path, data: bytes = b"not an image") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- find_images


def test_find_images_skips_hidden_and_non_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "cat" / "a.png")
    _png(root / "cat" / "sub" / "b.JPG")  # extension match is case-insensitive
    _png(root / "dog" / "c.jpeg")
    # tool state and hidden things that must never be picked up
    _png(root / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png")
    _png(root / ".git" / "objects" / "x.png")
    _png(root / "cat" / ".hidden.png")
    _touch(root / "cat" / "._a.png", b"\x00\x05\x16\x07 AppleDouble")
    _touch(root / "cat" / "notes.txt")
    _touch(root / "cat" / "Thumbs.db")
    _touch(root / "dog" / ".DS_Store")
    _png(root / "__MACOSX" / "cat" / "a.png")

    assert find_images(root) == ["cat/a.png", "cat/sub/b.JPG", "dog/c.jpeg"]
    assert find_images(root / "cat") == ["a.png", "sub/b.JPG"]


def test_find_images_respects_extension_argument(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.bmp")
    assert find_images(tmp_path, extensions=(".bmp",)) == ["b.bmp"]
    assert is_image_file("x/y/IMG.TIFF")
    assert not is_image_file("x/._IMG.jpg")
    assert not is_image_file("x/readme.md")


def test_find_images_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert find_images(tmp_path / "empty") == []


def test_find_images_symlink_loop_terminates_and_deduplicates(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "cls" / "a.png")
    _png(root / "cls" / "nested" / "b.png")
    os.symlink(root / "cls", root / "cls" / "nested" / "loop")  # cls/nested/loop -> cls: a cycle
    os.symlink(root / "cls" / "nested", root / "cls" / "alias")  # a second way into nested/
    os.symlink(root / "cls" / "a.png", root / "cls" / "a_copy.png")  # a file link to the same image

    with pytest.warns(UserWarning, match="more than one path"):  # the aliases are reported, not silently merged
        found = find_images(root)

    real = sorted(os.path.realpath(root / p) for p in found)
    assert len(real) == len(set(real)), f"an image was listed twice: {found}"
    assert set(real) == {os.path.realpath(root / "cls" / "a.png"), os.path.realpath(root / "cls" / "nested" / "b.png")}
    assert found == sorted(found)
    assert all((root / p).is_file() for p in found)


class _OrderedScandir:
    """``os.scandir`` replacement listing entries in a chosen order (file systems list in any order they like)."""

    def __init__(self, original, reverse: bool) -> None:
        self.original = original
        self.reverse = reverse

    def __call__(self, path: object = "."):
        with self.original(path) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=self.reverse)
        return _EntryList(entries)


class _EntryList:
    def __init__(self, entries: list) -> None:
        self.entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_find_images_independent_of_directory_listing_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sample paths feed the seeded split, so which of two names for one image wins must not depend on the order
    # in which the file system happens to list a folder.
    root = tmp_path / "data"
    _png(root / "cls" / "real" / "x.png")
    _png(root / "cls" / "real" / "y.png")
    _png(root / "cls" / "top.png")
    os.symlink(root / "cls" / "real", root / "cls" / "alias")
    os.symlink(root / "cls" / "top.png", root / "cls" / "top_link.png")

    original = os.scandir
    results = []
    for reverse in (False, True):
        monkeypatch.setattr(os, "scandir", _OrderedScandir(original, reverse))
        results.append(find_images(root))
    monkeypatch.setattr(os, "scandir", original)
    results.append(find_images(root))

    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 3


# --------------------------------------------------------------------------- list_class_dirs


def test_list_class_dirs_sorted_and_ignores_hidden(tmp_path: Path) -> None:
    for name in ("zebra", "ant", "Mole", ".ipynb_checkpoints", ".git", "__MACOSX", "__pycache__"):
        (tmp_path / name).mkdir()
    _touch(tmp_path / "loose_file.png")
    _touch(tmp_path / ".DS_Store")
    assert list_class_dirs(tmp_path) == ["Mole", "ant", "zebra"]


def test_list_class_dirs_missing_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        list_class_dirs(missing)
    not_a_dir = _touch(tmp_path / "file.txt")
    with pytest.raises(FileNotFoundError, match=r"file\.txt"):
        list_class_dirs(not_a_dir)


# --------------------------------------------------------------------------- to_rgb / load_rgb


def _rgb(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return tuple(img.getpixel(xy))  # type: ignore[arg-type]


def test_rgb_is_returned_unchanged() -> None:
    img = Image.new("RGB", (3, 2), (1, 2, 3))
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (3, 2) and _rgb(out) == (1, 2, 3)


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.new("L", (5, 4), 77).save(path)
    out = load_rgb(path)
    assert out.size == (5, 4)
    assert _rgb(out) == (77, 77, 77)


def test_rgba_transparent_pixels_become_background(tmp_path: Path) -> None:
    arr = np.zeros((4, 6, 4), dtype=np.uint8)
    arr[..., :3] = HIDDEN_COLOUR
    arr[:, :3, 3] = 0  # left half fully transparent, hidden colour underneath
    arr[:, 3:, 3] = 255  # right half opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)

    out = load_rgb(path)
    assert out.mode == "RGB"
    assert _rgb(out, (0, 0)) == ALPHA_BACKGROUND
    assert _rgb(out, (0, 0)) != HIDDEN_COLOUR
    assert _rgb(out, (5, 3)) == HIDDEN_COLOUR  # opaque pixels keep their colour


def test_rgba_half_transparent_blends_with_background() -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[..., :3] = (0, 0, 0)
    arr[..., 3] = 128
    out = np.asarray(to_rgb(Image.fromarray(arr, "RGBA")), dtype=int)
    expected = np.array(ALPHA_BACKGROUND) * (255 - 128) / 255
    assert np.all(np.abs(out - expected) <= 2)


def test_la_transparent_pixels_become_background() -> None:
    img = Image.new("LA", (3, 3), (9, 0))
    assert _rgb(to_rgb(img)) == ALPHA_BACKGROUND


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putpixel((1, 1), 1)
    path = tmp_path / "p.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    out = load_rgb(path)
    assert _rgb(out, (0, 0)) == (10, 20, 30)
    assert _rgb(out, (1, 1)) == (200, 100, 50)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path: Path, suffix: str) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette(list(HIDDEN_COLOUR) + [200, 100, 50] + [0] * (256 * 3 - 6))
    img.putpixel((3, 3), 1)
    path = tmp_path / f"pt{suffix}"
    img.save(path, transparency=0)  # index 0 (the hidden colour) is transparent
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = load_rgb(path)
    assert _rgb(out, (0, 0)) == ALPHA_BACKGROUND
    assert _rgb(out, (3, 3)) == (200, 100, 50)


def test_cmyk(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    r, g, b = _rgb(load_rgb(path), (8, 8))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    arr = np.full((4, 6), 32768, dtype=np.uint16)
    arr[0, 0] = 0
    arr[0, 1] = 65535
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        # the trap this guards against: a bare convert clips 16-bit values and whitens the image
        assert raw.convert("RGB").getpixel((3, 3)) == (255, 255, 255)

    out = load_rgb(path)
    r, g, b = _rgb(out, (3, 3))
    assert r == g == b
    assert abs(r - 128) <= 1
    assert _rgb(out, (0, 0)) == (0, 0, 0)
    assert _rgb(out, (1, 0)) == (255, 255, 255)


def test_16bit_in_memory() -> None:
    img = Image.fromarray(np.full((3, 3), 32768, dtype=np.uint16))
    assert img.mode == "I;16"
    assert abs(_rgb(to_rgb(img))[0] - 128) <= 1


def test_float_image_scaled_from_its_range() -> None:
    arr = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    out = to_rgb(Image.fromarray(arr, "F"))
    assert _rgb(out, (0, 0)) == (0, 0, 0)
    assert _rgb(out, (0, 1)) == (255, 255, 255)
    assert abs(_rgb(out, (1, 0))[0] - 128) <= 1


def _marker_jpeg(path: Path, orientation: int) -> None:
    """A 48x32 (w x h) black JPEG with a red 8x8 block in its stored top-left corner."""
    arr = np.zeros((32, 48, 3), dtype=np.uint8)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif, quality=95)


def _marker_box(img: Image.Image) -> tuple[int, int, int, int]:
    arr = np.asarray(img)
    ys, xs = np.nonzero((arr[..., 0] > 128) & (arr[..., 1] < 100))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize(
    ("orientation", "size", "box"),
    [
        (1, (48, 32), (0, 0, 7, 7)),  # as stored
        (6, (32, 48), (24, 0, 31, 7)),  # rotate 90° clockwise: top-left goes to top-right
        (8, (32, 48), (0, 40, 7, 47)),  # rotate 90° counter-clockwise: top-left goes to bottom-left
        (3, (48, 32), (40, 24, 47, 31)),  # rotate 180°
    ],
)
def test_exif_orientation_applied(
    tmp_path: Path, orientation: int, size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    _marker_jpeg(path, orientation)
    with Image.open(path) as raw:
        assert raw.size == (48, 32)
        assert raw.getexif().get(0x0112) == orientation
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert out.size == size
    assert _marker_box(out) == box


def test_load_rgb_reads_fully_and_closes(tmp_path: Path) -> None:
    path = _png(tmp_path / "x.png", (1, 2, 3))
    out = load_rgb(path)
    os.remove(path)  # the returned image must not depend on the file any more
    assert _rgb(out) == (1, 2, 3)


def test_load_rgb_corrupt_file_raises(tmp_path: Path) -> None:
    path = _touch(tmp_path / "bad.png", b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(OSError):
        load_rgb(path)


# --------------------------------------------------------------------------- check_image_header


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)

    def chunk(body: bytes) -> bytes:
        return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(ihdr) + chunk(idat) + chunk(b"IEND"))
    return path


def test_check_image_header(tmp_path: Path) -> None:
    assert check_image_header(_png(tmp_path / "ok.png")) is None
    good = _png(tmp_path / "full.png", size=(32, 32))
    data = good.read_bytes()
    truncated = _touch(tmp_path / "truncated.png", data[: len(data) // 2])
    assert check_image_header(truncated) is None  # header only: decoding is what finds truncation

    empty = check_image_header(_touch(tmp_path / "empty.png", b""))
    assert empty is not None and "empty" in empty
    junk = check_image_header(_touch(tmp_path / "junk.jpg", b"this is not a JPEG"))
    assert junk is not None and "not a readable image" in junk
    missing = check_image_header(tmp_path / "missing.png")
    assert missing is not None
    bomb = check_image_header(_png_claiming(tmp_path / "bomb.png", 40000, 40000))
    assert bomb is not None and "bomb" in bomb


def test_check_image_header_respects_pillow_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png_claiming(tmp_path / "big.png", 100, 100)
    assert check_image_header(path) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 - 1)  # just over the limit: Pillow only warns
    reason = check_image_header(path)
    assert reason is not None and "bomb" in reason


def test_colour_key_transparency_becomes_background(tmp_path: Path) -> None:
    from lit_transfer.data.images import ALPHA_BACKGROUND, load_rgb

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30)
    path = tmp_path / "key.png"
    Image.fromarray(pixels).save(path, transparency=(0, 0, 0))  # tRNS: black means transparent
    out = np.asarray(load_rgb(path))
    assert tuple(out[1, 1]) == ALPHA_BACKGROUND
    assert tuple(out[0, 0]) == (10, 20, 30)


def _smooth_jpeg(path: Path, size: tuple[int, int], exif: Image.Exif | None = None) -> Path:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    small.resize(size, Image.Resampling.BICUBIC).save(path, quality=95, exif=exif or Image.Exif())
    return path


REDUCED = [(None, (960, 640)), (80, (120, 80)), (100, (240, 160)), (160, (240, 160)), (170, (480, 320)),
           (330, (960, 640))]  # fmt: skip


@pytest.mark.parametrize(("min_side", "expected"), REDUCED)
def test_load_rgb_decodes_large_jpegs_at_reduced_size(
    tmp_path: Path, min_side: int | None, expected: tuple[int, int]
) -> None:
    path = _smooth_jpeg(tmp_path / "big.jpg", (960, 640))
    out = load_rgb(path, min_side)
    assert out.mode == "RGB"
    assert out.size == expected  # the smallest of 1/2, 1/4, 1/8 whose short side is still >= min_side
    full = np.asarray(load_rgb(path).resize(expected, Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(np.asarray(out, dtype=np.int16) - full).mean() < 4  # the same picture, not a crop or garbage


def test_reduced_decoding_keeps_exif_orientation_and_leaves_png_alone(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise: the upright image is portrait
    rotated = load_rgb(_smooth_jpeg(tmp_path / "r.jpg", (960, 640), exif), min_side=80)
    assert rotated.size == (80, 120)
    png = tmp_path / "big.png"
    Image.new("RGB", (960, 640), (10, 20, 30)).save(png)
    assert load_rgb(png, min_side=80).size == (960, 640)  # only JPEG decoders can scale while decoding
