"""The reports' drawings: confusion matrix heat map, per-class table, top-mistakes grid and table, reliability plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from lit_transfer.callbacks.calibration import Reliability
from lit_transfer.core.fonts import font

_font = lru_cache(maxsize=64)(font)  # loading a font takes a millisecond; a matrix asks for it hundreds of times

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


# TensorBoard shows images scaled: the IMAGES tab to its card's width, 350 px; TIME SERIES fits them in a box of at
# least 303 x 210 px (a 335 px card less its padding, a 320 px card less its header and step slider). The drawings are
# sized so that text stays legible at these sizes (see displayed_px).
CARD_WIDTH = 350
TIME_SERIES_BOX = (303, 210)
MATRIX_MAX_LABELLED = 30  # classes: above, the matrix is an overview heat map and the top-confusions list names them
MIN_FONT = 8  # px: the smallest class-label font of a labelled matrix
MIN_COUNT_FONT = 7  # px: counts that do not fit a cell at this size are not printed


def displayed_px(font_px: float, width: int, height: int | None = None) -> float:
    """How tall ``font_px`` text of an image ``width`` (x ``height``) pixels appears at TensorBoard's default sizes.

    Without ``height``: in the IMAGES tab, where the image is scaled to the card's width. With it: in TIME SERIES,
    where the image is fitted into :data:`TIME_SERIES_BOX`.
    """
    if height is None:
        return font_px * CARD_WIDTH / width
    return font_px * min(TIME_SERIES_BOX[0] / width, TIME_SERIES_BOX[1] / height)


@dataclass(frozen=True)
class MatrixLayout:
    """Where :func:`render_confusion_matrix` draws: cell and font sizes (pixels), the label column and header."""

    cell: int
    font: int  # class labels (0: unlabelled overview)
    count_font: int  # counts printed in the cells (0: not printed)
    label_w: int
    header: int
    names_on_columns: bool  # column headers are class names (else class indices, which the row labels carry)
    width: int
    height: int


def _row_label(i: int, name: str, with_index: bool) -> str:
    return f"{i} {name}" if with_index else name


def legend_px(font_px: int) -> int:
    """The font of the matrix's corner and legend text."""
    return max(9, min(12, font_px))


def matrix_layout(class_names: Sequence[str], max_count: int) -> MatrixLayout:
    """Cell and font sizes of the confusion matrix of ``class_names`` whose largest count is ``max_count``.

    Up to :data:`MATRIX_MAX_LABELLED` classes the image is :data:`CARD_WIDTH` wide (wider only when rows at
    :data:`MIN_FONT` need it), with the largest label font, up to 20 px, whose rows fit that width; cells grow past
    the font only while the image stays within TIME SERIES' box proportions (its height is what TIME SERIES scales
    by). Above, cells of 3 to 12 px and labels of 9 px only when cells are 10 px or more.
    """
    n = max(1, len(class_names))
    pad = 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def widest(texts: Sequence[str], size: int) -> int:
        return int(max((probe.textlength(t, font=_font(size)) for t in texts), default=0)) + 1

    def row_labels_w(size: int, with_index: bool) -> int:
        labels = [_row_label(i, c, with_index) for i, c in enumerate(class_names)]
        return min(CARD_WIDTH * 3 // 10, 6 + widest(labels, size))

    if len(class_names) <= MATRIX_MAX_LABELLED:
        size, cell_w, label_w, on_columns = MIN_FONT, MIN_FONT + 2, 0, False
        for size in range(20, MIN_FONT - 1, -1):
            label_w = row_labels_w(size, True)
            cell_w = (CARD_WIDTH - label_w - 2 * pad) // n
            if cell_w >= size + 2:
                break
        on_columns = widest(class_names, size) <= max(cell_w, size + 2) - 2
        if on_columns:  # no index needed in the row labels
            label_w = row_labels_w(size, False)
            cell_w = (CARD_WIDTH - label_w - 2 * pad) // n
        header, footer = size + 10, legend_px(size) + 8
        box_h = CARD_WIDTH * TIME_SERIES_BOX[1] // TIME_SERIES_BOX[0]  # taller than this: TIME SERIES shrinks it
        cell_h = (box_h - header - footer - pad) // n
        cell = min(96, max(size + 2, min(cell_w, cell_h)))
        if on_columns and widest(class_names, size) > cell - 2:
            on_columns, label_w = False, row_labels_w(size, True)
    else:
        cell = max(3, min(12, 1024 // n))
        size = 9 if cell >= 10 else 0
        label_w = row_labels_w(size, True) if size else 0
        on_columns, header, footer = False, (size + 10 if size else 14), legend_px(size) + 8
    count_font = 0
    for count_size in range(min(24, size + 6, cell - 3), MIN_COUNT_FONT - 1, -1):
        if probe.textlength(str(max_count), font=_font(count_size)) <= cell - 3:
            count_font = count_size
            break
    if len(class_names) <= MATRIX_MAX_LABELLED:
        label_w += max(0, CARD_WIDTH - (label_w + n * cell + 2 * pad))  # exactly the card's width: shown 1:1
    width = label_w + n * cell + 2 * pad
    return MatrixLayout(cell, size, count_font, label_w, header, on_columns, width, header + n * cell + footer + pad)


def render_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str]) -> Image.Image:
    """The confusion matrix as a heat map: colour by each row's share (the diagonal is recall), counts printed.

    Sized by :func:`matrix_layout` to be legible at TensorBoard's default card width up to
    :data:`MATRIX_MAX_LABELLED` classes; above, an overview (labelled up to about 100 classes) to read with the
    top-confusions list (:func:`format_top_confusions`).
    """
    n = len(class_names)
    counts = matrix.long().cpu()
    rows = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    layout = matrix_layout(class_names, int(counts.max()) if n else 0)
    cell, pad = layout.cell, 6
    left, top = pad + layout.label_w, layout.header
    size = cell * n
    img = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(img)
    font = _font(legend_px(layout.font))
    dark = np.array([8, 48, 107], dtype=np.float64)
    colours = np.round(255 - (255 - dark) * rows.numpy()[..., None]).astype(np.uint8)  # (n, n, 3)
    cells = colours.repeat(cell, axis=0).repeat(cell, axis=1)
    if cell >= 8:  # light grid lines between cells
        cells[cell - 1 :: cell, :, :] = 228
        cells[:, cell - 1 :: cell, :] = 228
    img.paste(Image.fromarray(cells), (left, top))
    if layout.count_font:
        count_font = _font(layout.count_font)
        for i, j in counts.nonzero().tolist():
            fill = "white" if float(rows[i, j]) > 0.5 else "black"
            xy = (left + j * cell + cell / 2, top + i * cell + cell / 2)
            draw.text(xy, str(int(counts[i, j])), fill=fill, font=count_font, anchor="mm")
    draw.rectangle([left - 1, top - 1, left + size, top + size], outline="gray")
    corner = "true \\ predicted"
    if draw.textlength(corner, font=font) > layout.label_w - 4:
        corner = "true \\ pred"
    draw.text((pad, top - 4), corner, fill="gray", font=font, anchor="ls")
    if layout.font:
        label_font = _font(layout.font)
        index_size = next(
            (k for k in range(layout.font, 5, -1) if draw.textlength(str(n - 1), font=_font(k)) <= cell), 6
        )
        index_font = _font(index_size)
        for i, name in enumerate(class_names):
            text = fit_text(_row_label(i, name, not layout.names_on_columns), layout.label_w - 6, draw, label_font)
            draw.text((left - 4, top + i * cell + cell / 2), text, fill="black", font=label_font, anchor="rm")
            if layout.names_on_columns:
                column, column_font = fit_text(name, cell - 1, draw, label_font), label_font
            else:  # indices: the largest font, down to 6 px, in which every index fits its cell
                column, column_font = str(i), index_font
            draw.text((left + i * cell + cell / 2, top - 4), column, fill="black", font=column_font, anchor="ms")
    legend = "colour: share of the true class" + (", numbers: counts" if layout.count_font else "")
    draw.text((pad, top + size + 4), fit_text(legend, layout.width - 2 * pad, draw, font), fill="gray", font=font)
    return img


def top_confusions(matrix: torch.Tensor, k: int) -> list[tuple[int, int, int, float]]:
    """The ``k`` largest off-diagonal counts: ``(true, predicted, count, share of the true class)``, largest first."""
    counts = matrix.long().cpu().numpy()
    support = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true, predicted = off.nonzero()
    order = np.lexsort((predicted, true, -off[true, predicted]))[:k]  # count descending, then class order
    return [
        (int(t), int(p), int(off[t, p]), float(off[t, p]) / max(1, int(support[t])))
        for t, p in zip(true[order], predicted[order], strict=True)
    ]


def format_top_confusions(matrix: torch.Tensor, class_names: Sequence[str], k: int = 20) -> str:
    """Markdown list of the ``k`` most frequent confusions: ``true → predicted: count (share of true class)``."""
    errors = int(matrix.long().sum() - matrix.long().diag().sum())
    found = top_confusions(matrix, k)
    if not found:
        return "no misclassified validation images"
    head = f"{len(found)} most frequent confusions of {errors} misclassified validation images:"
    lines = [
        f"{r + 1}. {class_names[t]} → {class_names[p]}: {c} ({share:.1%} of {class_names[t]})"
        for r, (t, p, c, share) in enumerate(found)
    ]
    return head + "\n\n" + "\n".join(lines)


def caption_tile(image: torch.Tensor, lines: Sequence[str], size: int, font_px: int = 11) -> torch.Tensor:
    """One ``uint8`` CHW image scaled to ``size`` pixels wide with text lines of ``font_px`` below it."""
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array[..., :3]).convert("RGB")
    height = max(1, round(size * pil.height / pil.width))
    pil = pil.resize((size, height), Image.Resampling.BILINEAR)
    font = _font(font_px)
    line = round(font_px * 1.3)
    band = line * len(lines) + 4
    tile = Image.new("RGB", (size, height + band), "white")
    tile.paste(pil, (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, text in enumerate(lines):
        draw.text((2, height + 2 + line * k), fit_text(text, size - 4, draw, font), fill="black", font=font)
    return torch.from_numpy(np.asarray(tile).copy()).permute(2, 0, 1)


GRID_PADDING = 4


def grid_columns(count: int) -> int:
    """Tiles per row of the mistakes grid of ``count`` tiles (a square grid)."""
    return min(count, max(1, math.ceil(math.sqrt(count))))


def caption_font_px(count: int, tile_size: int) -> int:
    """The caption font of a grid of ``count`` tiles: 10 px or more once the grid is scaled to :data:`CARD_WIDTH`."""
    width = grid_columns(count) * (tile_size + GRID_PADDING) + GRID_PADDING
    return max(11, min(max(11, tile_size // 4), math.ceil(10 * width / CARD_WIDTH)))


def mistake_caption(true: str, predicted: str, confidence: float, width: int, font_px: int) -> list[str]:
    """``true -> predicted (p)`` on one line when it fits ``width`` pixels, else on two (the font has no arrow).

    Names too long for the line are cut with an ellipsis; the probability never is.
    """
    probe, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(font_px)
    p = f" ({confidence:.2f})"
    line = f"{true} -> {predicted}{p}"
    if probe.textlength(line, font=font) <= width:
        return [line]
    rest = max(1, width - int(probe.textlength(p, font=font)))
    return [fit_text(f"{true} ->", width, probe, font), fit_text(predicted, rest, probe, font) + p]


def mistakes_grid(mistakes: Sequence[Mistake], names: Sequence[str], tile_size: int) -> torch.Tensor:
    """The mistakes as one ``uint8`` CHW grid of tiles ``tile_size`` wide captioned ``true -> predicted (p)``.

    The caption font (:func:`caption_font_px`) grows with the grid, so that it stays legible at TensorBoard's card
    width.
    """
    font_px = caption_font_px(len(mistakes), tile_size)
    tiles = [
        caption_tile(image, mistake_caption(names[t], names[p], c, tile_size - 4, font_px), tile_size, font_px)
        for c, image, t, p in mistakes
    ]
    height = max(t.shape[1] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, 0, 0, height - t.shape[1]), value=255) for t in tiles]
    return make_grid(tiles, nrow=grid_columns(len(tiles)), padding=GRID_PADDING, pad_value=255)


def mistakes_table(mistakes: Sequence[Mistake], names: Sequence[str]) -> str:
    """A Markdown table of the mistakes: rank, true class, predicted class and confidence."""
    rows = [f"| {r + 1} | {names[t]} | {names[p]} | {c:.3f} |" for r, (c, _, t, p) in enumerate(mistakes)]
    return "| rank | true | predicted | confidence |\n|---:|---|---|---:|\n" + "\n".join(rows)


def count_label(count: int) -> str:
    """A bin's image count in at most four characters: ``7``, ``999``, ``1.2k``, ``12k``, ``3.4M``."""
    if count < 1000:
        return str(count)
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)  # (unreachable)


def render_reliability_diagram(reliability: Reliability) -> Image.Image:
    """The reliability diagram: per confidence bin, accuracy bars against the diagonal, the gap and the image count.

    :data:`CARD_WIDTH` wide, so text is shown 1:1 in TensorBoard's IMAGES tab. A bar's height is the share of the
    bin's images classified right; the red box spans from it to the bin's mean confidence (its calibration gap); the
    diagonal is perfect calibration. The title carries the ECE (as ``val_ece``) and the number of images.
    """
    n = len(reliability.counts)
    width, pad = CARD_WIDTH, 6
    x0, x1, y0 = 30, CARD_WIDTH - 8, 22
    y1 = y0 + 156
    height = y1 + 48 + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    title_font, label_font, count_font = _font(11), _font(10), _font(9)

    def y_of(value: float) -> float:
        return y1 - (y1 - y0) * min(max(value, 0.0), 1.0)

    title = f"reliability: ECE {reliability.ece:.4f}, {reliability.total} images, {n} bins"
    draw.text((pad, 4), fit_text(title, width - 2 * pad, draw, title_font), fill="black", font=title_font)
    draw.line([(x0, y_of(0.5)), (x1, y_of(0.5))], fill=(228, 228, 228))
    bin_w = (x1 - x0) / max(1, n)
    for i in range(n):
        count = int(reliability.counts[i])
        left, right = x0 + i * bin_w + 1, x0 + (i + 1) * bin_w - 1
        centre = (left + right) / 2
        if count == 0:
            continue
        accuracy, confidence = float(reliability.accuracy[i]), float(reliability.confidence[i])
        draw.rectangle([left, y_of(accuracy), right, y1], fill=(70, 110, 180))
        top, bottom = sorted((y_of(accuracy), y_of(confidence)))
        if bottom - top >= 1:
            draw.rectangle([left, top, right, bottom], fill=(244, 170, 170), outline=(200, 40, 40))
        label = count_label(count)
        size = next((s for s in (9, 8, 7) if draw.textlength(label, font=_font(s)) <= bin_w), 0)
        if size:
            draw.text((centre, y1 + 3), label, fill="dimgray", font=_font(size), anchor="ma")
    steps = 24  # the diagonal, dashed
    for k in range(0, steps, 2):
        a, b = k / steps, (k + 1) / steps
        draw.line([(x0 + (x1 - x0) * a, y_of(a)), (x0 + (x1 - x0) * b, y_of(b))], fill="gray", width=1)
    draw.rectangle([x0, y0, x1, y1], outline="gray")
    for value, text in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        draw.text((x0 - 3, y_of(value)), text, fill="black", font=label_font, anchor="rm")
        draw.text((x0 + (x1 - x0) * value, y1 + 15), text, fill="black", font=label_font, anchor="ma")
    draw.text((x0 + (x1 - x0) * 0.75, y1 + 15), "confidence", fill="black", font=label_font, anchor="ma")
    draw.text((x0 + 3, y0 + 2), "accuracy", fill="gray", font=count_font)
    legend = "bars: accuracy, red: gap to the mean confidence, numbers: images"
    draw.text((pad, y1 + 31), fit_text(legend, width - 2 * pad, draw, count_font), fill="gray", font=count_font)
    return img
