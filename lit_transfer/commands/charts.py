"""The data card's PNG charts, drawn with Pillow only: images per class and split, and image sizes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from PIL import Image, ImageDraw

from lit_transfer.core.fonts import font as _font
from lit_transfer.data.splits import SPLITS, Sample

SPLIT_COLOURS: dict[str, tuple[int, int, int]] = {"train": (31, 119, 180), "val": (255, 127, 14), "test": (44, 160, 44)}


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    if top <= 0:
        return [0.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(top // step) + 1)]


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, font: Any) -> None:
    for split, colour in SPLIT_COLOURS.items():
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=colour)
        draw.text((x + 14, y), split, fill="black", font=font)
        x += 24 + int(draw.textlength(split, font=font))


def plot_class_counts(card: dict[str, Any]) -> Image.Image:
    """Horizontal stacked bars of images per class and split, largest class on top."""
    font = _font(12)
    names = list(card["class_names"])
    counts = {split: card["splits"][split]["class_counts"] for split in SPLITS}
    totals = {name: sum(counts[split][name] for split in SPLITS) for name in names}
    names.sort(key=lambda n: (-totals[n], n))
    row, label_w, bar_w, top, pad = 14, min(200, 8 + max((len(n) for n in names), default=4) * 7), 520, 56, 12
    width, height = label_w + bar_w + 3 * pad + 40, top + row * len(names) + pad  # 40: room for the totals
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 6), f"images per class ({card['images']:,} images, {len(names)} classes)", fill="black", font=font)
    _legend(draw, pad, 24, font)
    x0, most = label_w + pad, max(totals.values(), default=0) or 1
    for tick in _nice_ticks(most):
        x = x0 + int(tick / most * bar_w)
        draw.line([x, top - 4, x, height - pad], fill=(225, 225, 225))
        draw.text((x + 2, top - 16), f"{tick:g}", fill="gray", font=font)
    for i, name in enumerate(names):
        y = top + i * row
        label = name if len(name) <= (label_w - 8) // 7 else name[: (label_w - 8) // 7 - 1] + "…"
        draw.text((pad, y), label, fill="black", font=font)
        x = x0
        for split in SPLITS:
            w = counts[split][name] / most * bar_w
            if w > 0:
                draw.rectangle([int(x), y + 2, max(int(x), int(x + w) - 1), y + row - 2], fill=SPLIT_COLOURS[split])
            x += w
        draw.text((int(x) + 4, y), str(totals[name]), fill="gray", font=font)
    return img


def plot_sizes(rows: Iterable[tuple[Sample, dict[str, Any]]]) -> Image.Image:
    """Scatter of upright image width against height, coloured by split."""
    font = _font(12)
    points = [(s.split, r["width"], r["height"]) for s, r in rows if r["width"]]
    size, margin = 520, 56
    img = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 8), f"image sizes ({len(points):,} readable images)", fill="black", font=font)
    _legend(draw, margin, 26, font)
    top = 1.05 * max([max(w, h) for _, w, h in points], default=1)  # headroom: no point on the frame
    x0, y0 = margin, margin + size  # origin at the bottom left

    def to_xy(w: float, h: float) -> tuple[float, float]:
        return x0 + w / top * size, y0 - h / top * size

    for tick in _nice_ticks(top):
        x, y = to_xy(tick, tick)
        draw.line([x, margin, x, y0], fill=(230, 230, 230))
        draw.line([x0, y, x0 + size, y], fill=(230, 230, 230))
        draw.text((x - 8, y0 + 4), f"{tick:g}", fill="gray", font=font)
        draw.text((4, y - 7), f"{tick:g}", fill="gray", font=font)
    draw.rectangle([x0, margin, x0 + size, y0], outline="black")
    draw.text((x0 + size // 2 - 20, y0 + 22), "width", fill="black", font=font)
    draw.text((4, margin - 18), "height", fill="black", font=font)
    for split in SPLITS:
        for _, w, h in (p for p in points if p[0] == split):
            x, y = to_xy(w, h)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=SPLIT_COLOURS[split])
    return img
