"""The reports' drawings: the confusion matrix heat map, the per-class table and the top-mistakes grid and table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from lit_transfer.core.fonts import font as _font

Mistake = tuple[float, torch.Tensor, int, int]  # (confidence, uint8 CHW image, true class, predicted class)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images as they are; float images in [0, 1] scaled to ``uint8``."""
    if images.dtype == torch.uint8:
        return images
    return images.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def fit_text(text: str, width: int, draw: ImageDraw.ImageDraw, font: Any) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def class_metrics(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows: true, columns: predicted).

    A class that is never predicted has precision 0, and one without samples has recall 0, as in torchmetrics.
    """
    m = matrix.double()
    tp, support, predicted = m.diag(), m.sum(dim=1), m.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.long()}


def format_class_table(matrix: torch.Tensor, class_names: Sequence[str]) -> str:
    """A Markdown table of per-class precision, recall, F1 and support, with the macro average."""
    metrics = class_metrics(matrix)
    worst = sorted(range(len(class_names)), key=lambda i: (float(metrics["f1"][i]), class_names[i]))[:5]
    lines = [
        "lowest F1: " + ", ".join(f"{class_names[i]} ({float(metrics['f1'][i]):.2f})" for i in worst),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(class_names):
        p, r, f = (float(metrics[k][i]) for k in ("precision", "recall", "f1"))
        lines.append(f"| {name} | {p:.3f} | {r:.3f} | {f:.3f} | {int(metrics['support'][i])} |")
    p, r, f = (float(metrics[k].mean()) for k in ("precision", "recall", "f1"))
    lines.append(f"| **macro average** | {p:.3f} | {r:.3f} | {f:.3f} | {int(metrics['support'].sum())} |")
    return "\n".join(lines)


def render_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str]) -> Image.Image:
    """The confusion matrix as a heat map, each row scaled by its class's count (so the diagonal is recall).

    Class names label the axes up to about 110 classes; counts are printed in cells of 24 pixels or more.
    """
    n = len(class_names)
    counts = matrix.long().cpu()
    rows = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    cell = max(3, min(40, 1024 // max(n, 1)))  # Caltech 101 still gets labelled 10-pixel cells
    font = _font(11 if cell >= 14 else 9)
    labelled = cell >= 9
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(160, 8 + max(int(probe.textlength(c, font=font)) for c in class_names)) if labelled else 0
    left, top, pad = label_w + 24, label_w + 40, 8
    size = cell * n
    img = Image.new("RGB", (left + size + pad, top + size + pad), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 4), "confusion matrix: rows true, columns predicted (row-normalized)", fill="black", font=font)
    dark = np.array([8, 48, 107], dtype=np.float64)
    for i in range(n):
        for j in range(n):
            v = float(rows[i, j])
            colour = tuple(int(c) for c in np.round(255 - (255 - dark) * v))
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            if cell >= 24 and counts[i, j] > 0:
                text = str(int(counts[i, j]))
                w = draw.textlength(text, font=font)
                draw.text((x + (cell - w) / 2, y + cell / 2 - 6), text, fill="white" if v > 0.5 else "black", font=font)
    draw.rectangle([left - 1, top - 1, left + size, top + size], outline="gray")
    draw.text((4, top - 16), "true", fill="gray", font=font)
    draw.text((left, top - 16 - (label_w if labelled else 0)), "predicted", fill="gray", font=font)
    if labelled:
        for i, name in enumerate(class_names):
            text = fit_text(name, label_w - 8, draw, font)
            draw.text(
                (left - 6 - draw.textlength(text, font=font), top + i * cell + cell / 2 - 6),
                text,
                fill="black",
                font=font,
            )
            # column labels: drawn horizontally on a strip, then turned upright
            strip = Image.new("RGB", (label_w, cell), "white")
            ImageDraw.Draw(strip).text((2, cell / 2 - 6), text, fill="black", font=font)
            img.paste(strip.rotate(90, expand=True), (left + i * cell, top - 4 - label_w))
    return img


def caption_tile(image: torch.Tensor, lines: Sequence[str], size: int) -> torch.Tensor:
    """One ``uint8`` CHW image scaled to ``size`` pixels wide with text lines below it."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array[..., :3]).convert("RGB")
    height = max(1, round(size * pil.height / pil.width))
    pil = pil.resize((size, height), Image.Resampling.BILINEAR)
    font = _font(11)
    band = 14 * len(lines) + 4
    tile = Image.new("RGB", (size, height + band), "white")
    tile.paste(pil, (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, line in enumerate(lines):
        draw.text((2, height + 2 + 14 * k), fit_text(line, size - 4, draw, font), fill="black", font=font)
    return torch.from_numpy(np.asarray(tile).copy()).permute(2, 0, 1)


def mistakes_grid(mistakes: Sequence[Mistake], names: Sequence[str], tile_size: int) -> torch.Tensor:
    """The mistakes as one ``uint8`` CHW grid of captioned tiles (true and predicted class), ``tile_size`` wide each."""
    tiles = [
        caption_tile(image, [f"true: {names[t]}", f"pred {c:.2f}: {names[p]}"], tile_size)
        for c, image, t, p in mistakes
    ]
    height = max(t.shape[1] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, 0, 0, height - t.shape[1]), value=255) for t in tiles]
    nrow = min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles)))))
    return make_grid(tiles, nrow=nrow, padding=4, pad_value=255)


def mistakes_table(mistakes: Sequence[Mistake], names: Sequence[str]) -> str:
    """A Markdown table of the mistakes: rank, true class, predicted class and confidence."""
    rows = [f"| {r + 1} | {names[t]} | {names[p]} | {c:.3f} |" for r, (c, _, t, p) in enumerate(mistakes)]
    return "| rank | true | predicted | confidence |\n|---:|---|---|---:|\n" + "\n".join(rows)
