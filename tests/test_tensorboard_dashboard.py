"""TensorBoard as the dashboard: the custom-scalars layout, PR curves, and reports legible at TensorBoard's card sizes.

A tiny real fit through the command line is read back from its event files; the drawings are checked on synthetic
matrices.
"""

from __future__ import annotations

import inspect
import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import classification_report, precision_recall_curve
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from torch.utils.tensorboard.summary import compute_curve

from lit_transfer.callbacks import reports
from lit_transfer.callbacks.layout import LR_REGEX, layouts_in, scalar_charts
from lit_transfer.callbacks.report_drawing import (
    CARD_WIDTH,
    MATRIX_MAX_LABELLED,
    caption_font_px,
    displayed_px,
    format_top_confusions,
    matrix_layout,
    mistake_caption,
    mistakes_grid,
    render_confusion_matrix,
    top_confusions,
)
from lit_transfer.callbacks.reports import PR_THRESHOLDS, BinnedPRCounts, pr_curve_data
from lit_transfer.cli import main

CLASSES = tuple(f"c{i}" for i in range(7))  # more than five classes: top-5 accuracy is logged too


def _tiny_args(root: Path, *extra: str, epochs: int) -> list[str]:
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--data.val_fraction", "0.25",
        "--model", "TransferClassifier",
        "--model.backbone", "smallcnn",
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "dash",
        *extra,
    ]  # fmt: skip


def _make_tree(root: Path, per_class: int = 8) -> Path:
    """``root/<class>/img_NNN.png`` for :data:`CLASSES`, noisy images of three dominant colours (as tests/conftest)."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
            pixels[..., i % 3] += 150
            Image.fromarray(pixels).save(root / name / f"img_{i:03d}.png")
    return root


def _events(run: Path) -> EventAccumulator:
    guidance = {k: 0 for k in ("compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")}
    events = EventAccumulator(str(run), size_guidance=guidance)
    events.Reload()
    return events


@pytest.fixture(scope="module")
def dashboard_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-epoch fit of 7 classes, resumed for a third, with the validation logits the reports callback saw."""
    base = tmp_path_factory.mktemp("dash")
    root = _make_tree(base / "data")
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (global step, logits, targets) per validation batch
    original = reports.TensorBoardReports.on_validation_batch_end

    def record(self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any, **kw: Any) -> None:
        if self._collecting and isinstance(outputs, dict):
            seen.append((trainer.global_step, outputs["logits"].detach().float().cpu(), batch[1].cpu()))
        original(self, trainer, pl_module, outputs, batch, *args, **kw)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(reports.TensorBoardReports, "on_validation_batch_end", record)
    monkeypatch.setattr(sys, "argv", ["lit_transfer"])
    monkeypatch.chdir(base)
    try:
        main(["fit", *_tiny_args(root, epochs=2)])
        main(["fit", *_tiny_args(root, "--ckpt_path", "last", epochs=3)])  # the same run folder, resumed
    finally:
        monkeypatch.undo()
    run = base / "runs" / "dash" / "version_0"
    assert not (base / "runs" / "dash" / "version_1").exists()
    return {"run": run, "events": _events(run), "seen": seen}


def _last_validation(seen: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[int, np.ndarray, np.ndarray]:
    step = max(s for s, _, _ in seen)
    logits = torch.cat([lg for s, lg, _ in seen if s == step])
    targets = torch.cat([t for s, _, t in seen if s == step])
    return step, logits.softmax(dim=1).numpy(), targets.numpy()


def _text(events: EventAccumulator, tag: str, step: int) -> str:
    event = next(e for e in events.Tensors(f"{tag}/text_summary") if e.step == step)
    return event.tensor_proto.string_val[0].decode()


# --- the custom-scalars layout --------------------------------------------------------------------------------------


def test_layout_charts_point_at_logged_scalars(dashboard_run: dict[str, Any]) -> None:
    events = dashboard_run["events"]
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    assert events.SummaryMetadata("custom_scalars__config__").plugin_data.plugin_name == "custom_scalars"
    layouts = layouts_in(dashboard_run["run"])
    assert len(layouts) == 1  # the resumed fit found it and did not write it again
    (category,) = layouts[0].category
    assert category.title == "dash"  # the experiment
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert {"loss", "accuracy", "F1", "learning rate"} <= set(charts)
    scalars = set(events.Tags()["scalars"])
    for title, regexes in charts.items():
        for regex in regexes:
            assert any(re.search(regex, tag) for tag in scalars), (title, regex, sorted(scalars))
    matched = {title: {t for t in scalars if any(re.search(r, t) for r in rs)} for title, rs in charts.items()}
    assert matched["loss"] == {"train_loss", "val_loss"}  # train against val on one chart
    assert {"train_acc", "val_acc", "val_acc_top5"} <= matched["accuracy"]
    assert matched["F1"] == {"train_f1", "val_f1"}
    assert matched["learning rate"] and all(t.startswith("lr-") for t in matched["learning rate"])
    assert any(t.endswith("/head") for t in matched["learning rate"])


def test_layout_regexes_are_stable_and_skip_what_is_not_logged() -> None:
    small = scalar_charts({"train_loss", "val_loss", "train_acc", "val_acc"}, learning_rates=False)
    large = scalar_charts({"train_loss", "val_loss", "val_acc", "val_acc_top5"}, learning_rates=False)
    assert set(small) == {"loss", "accuracy"}  # no F1 chart without F1, no learning-rate chart without the monitor
    assert small["accuracy"] == large["accuracy"]  # runs with and without top-5 merge into one chart
    other = scalar_charts({"val_angle_error", "val_custom_thing"}, learning_rates=True)
    assert set(other) == {"angle error", "custom_thing", "learning rate"}
    assert re.search(other["custom_thing"][1][0], "val_custom_thing")
    assert re.search(LR_REGEX, "lr-SGD/backbone") and re.search(LR_REGEX, "lr-AdamW")
    assert not re.search(LR_REGEX, "lr-SGD/head-momentum") and not re.search(LR_REGEX, "lr-AdamW-weight_decay")


# --- PR curves --------------------------------------------------------------------------------------------------------


def test_pr_curves_per_class_per_validation_match_sklearn(dashboard_run: dict[str, Any]) -> None:
    events, seen = dashboard_run["events"], dashboard_run["seen"]
    tags = [t for t in events.Tags()["tensors"] if t.startswith("reports/pr_curve/")]
    assert sorted(tags) == [f"reports/pr_curve/{c}" for c in CLASSES]
    validations = sorted({s for s, _, _ in seen})
    assert len(validations) == 3  # three reported validations (the sanity check is not one)
    for tag in tags:
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "pr_curves"
        assert sorted(e.step for e in events.Tensors(tag)) == validations
    step, probs, targets = _last_validation(seen)
    for c in (0, 3):
        event = next(e for e in events.Tensors(f"reports/pr_curve/{CLASSES[c]}") if e.step == step)
        data = tensor_util.make_ndarray(event.tensor_proto)  # rows: tp, fp, tn, fn, precision, recall
        tp, fp, tn, fn, precision, recall = data
        assert data.shape[1] == PR_THRESHOLDS
        positives = targets == c
        assert tp[0] + fn[0] == positives.sum() and fp[0] + tn[0] == (~positives).sum()
        sk_precision, sk_recall, sk_thresholds = precision_recall_curve(positives, probs[:, c])
        for i, threshold in enumerate(np.arange(PR_THRESHOLDS) / (PR_THRESHOLDS - 1)):
            k = np.searchsorted(sk_thresholds, threshold, side="left")  # the first cut at or above this threshold
            if k == len(sk_thresholds):  # nothing predicted positive
                assert tp[i] == 0 and fp[i] == 0
                continue
            assert precision[i] == pytest.approx(sk_precision[k], abs=1e-6), (c, i)
            assert recall[i] == pytest.approx(sk_recall[k], abs=1e-6), (c, i)


def test_binned_counts_give_tensorboards_own_curve_and_sum_across_ranks() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(500, 12, generator=generator).mul(2).softmax(dim=1)
    target = torch.randint(0, 12, (500,), generator=generator)
    whole, first, second = BinnedPRCounts(5), BinnedPRCounts(5), BinnedPRCounts(5)
    whole.update(probs, target)
    first.update(probs[:200], target[:200])
    second.update(probs[200:], target[200:])
    first.merge_state(second)  # what the "sum" reduction does across processes
    assert torch.equal(first.compute(), whole.compute())
    counts = whole.compute().numpy()
    for c in range(5):
        expected = compute_curve((target == c).numpy(), probs[:, c].double().numpy(), num_thresholds=PR_THRESHOLDS)
        ours = pr_curve_data(counts[0, c], counts[1, c])
        got = np.stack([ours[k] for k in ("tp", "fp", "tn", "fn", "precision", "recall")])
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_pr_curves_are_bounded_by_the_option() -> None:
    callback = reports.TensorBoardReports(pr_curves_max_classes=4)
    pr = callback._pr_counts(100, torch.device("cpu"))
    assert pr is not None and pr.num_classes == 4 and pr.counts.shape == (2, 4, PR_THRESHOLDS)
    assert reports.TensorBoardReports(pr_curves_max_classes=0)._pr_counts(10, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="pr_curves_max_classes"):
        reports.TensorBoardReports(pr_curves_max_classes=-1)


# --- the per-class table, the confusion matrix and the top confusions ----------------------------------------------


def test_per_class_markdown_table_matches_sklearn(dashboard_run: dict[str, Any]) -> None:
    events = dashboard_run["events"]
    step, probs, targets = _last_validation(dashboard_run["seen"])
    table = _text(events, "reports/per_class", step)
    rows = {
        cells[0]: [float(v) for v in cells[1:]]
        for line in table.splitlines()
        if (cells := [c.strip() for c in line.strip().strip("|").split("|")])[0] in CLASSES
    }
    expected = classification_report(
        targets, probs.argmax(axis=1), labels=range(len(CLASSES)), target_names=CLASSES, zero_division=0,
        output_dict=True,
    )  # fmt: skip
    assert set(rows) == set(CLASSES)
    for name in CLASSES:
        precision, recall, f1, support = rows[name]
        assert precision == pytest.approx(expected[name]["precision"], abs=5e-4)
        assert recall == pytest.approx(expected[name]["recall"], abs=5e-4)
        assert f1 == pytest.approx(expected[name]["f1-score"], abs=5e-4)
        assert support == expected[name]["support"]
    macro = next(line for line in table.splitlines() if "macro average" in line)
    f1_macro = float(macro.strip("|").split("|")[3])
    assert f1_macro == pytest.approx(expected["macro avg"]["f1-score"], abs=5e-4)


def test_confusion_matrix_image_is_legible_at_card_width(dashboard_run: dict[str, Any]) -> None:
    events = dashboard_run["events"]
    step, probs, targets = _last_validation(dashboard_run["seen"])
    event = next(e for e in events.Images("reports/confusion_matrix") if e.step == step)
    image = Image.open(io.BytesIO(event.encoded_image_string))
    matrix = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    np.add.at(matrix.numpy(), (targets, probs.argmax(axis=1)), 1)
    layout = matrix_layout(list(CLASSES), int(matrix.max()))
    assert image.size == (layout.width, layout.height) == render_confusion_matrix(matrix, list(CLASSES)).size
    assert image.width >= CARD_WIDTH  # never scaled up (blurred) in the IMAGES tab
    assert displayed_px(layout.font, image.width) >= 14 and displayed_px(layout.count_font, image.width) >= 14
    assert displayed_px(layout.font, image.width, image.height) >= 10  # TIME SERIES, fitted in its image box
    text = _text(events, "reports/top_confusions", step)
    errors = int(matrix.sum() - matrix.diag().sum())
    assert f"of {errors} misclassified" in text or (errors == 0 and "no misclassified" in text)


@pytest.mark.parametrize(("n", "label_px", "count_px"), [(3, 15, 15), (10, 15, 12), (20, 10, 8), (30, 7.5, 0)])
def test_confusion_matrix_fonts_scale_with_the_class_count(n: int, label_px: float, count_px: float) -> None:
    names = [f"class_{i}" for i in range(n)]
    matrix = torch.eye(n, dtype=torch.long) * 40 + 3  # two-digit counts
    layout = matrix_layout(names, int(matrix.max()))
    image = render_confusion_matrix(matrix, names)
    assert image.size == (layout.width, layout.height)
    assert displayed_px(layout.font, image.width) >= label_px  # class labels, in the IMAGES tab's 350 px card
    assert displayed_px(layout.count_font, image.width) >= count_px
    if count_px:
        assert layout.count_font > 0  # the counts are printed, not only coloured
    # the labels are drawn: dark ink in the label column of every row
    pixels = np.asarray(image.convert("L"))
    left = 6 + layout.label_w
    for i in range(n):
        band = pixels[layout.header + i * layout.cell : layout.header + (i + 1) * layout.cell, 6:left]
        assert (band < 100).any(), f"row {i} has no label"


def test_many_classes_get_a_top_confusions_list() -> None:
    n = 40
    names = [f"k{i:02d}" for i in range(n)]
    matrix = torch.eye(n, dtype=torch.long) * 20
    matrix[3, 7], matrix[3, 3] = 9, 11  # 9 of class k03's 20 images predicted k07
    matrix[10, 2] = 4
    matrix[25, 30], matrix[25, 25] = 6, 14
    assert n > MATRIX_MAX_LABELLED
    assert top_confusions(matrix, 2) == [(3, 7, 9, 0.45), (25, 30, 6, 0.3)]
    text = format_top_confusions(matrix, names, k=20)
    lines = text.splitlines()
    assert lines[0] == "3 most frequent confusions of 19 misclassified validation images:"
    assert lines[2:] == [
        "1. k03 → k07: 9 (45.0% of k03)",
        "2. k25 → k30: 6 (30.0% of k25)",
        "3. k10 → k02: 4 (16.7% of k10)",
    ]
    assert format_top_confusions(torch.eye(n, dtype=torch.long), names) == "no misclassified validation images"


# --- the top mistakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 4, 16])
def test_mistake_captions_are_legible_at_card_width(count: int) -> None:
    names = ["airplane", "automobile", "bird"]
    mistakes = [(0.97, torch.full((3, 32, 32), 90, dtype=torch.uint8), 0, 1) for _ in range(count)]
    grid = mistakes_grid(mistakes, names, 112)
    font_px = caption_font_px(count, 112)
    assert displayed_px(font_px, grid.shape[2]) >= 10  # the IMAGES tab scales the grid to its card's width
    assert mistake_caption("3", "5", 0.974, 108, font_px) == ["3 -> 5 (0.97)"]
    first, second = mistake_caption(names[0], names[1], 0.97, 108, font_px)  # too long for one line
    assert first == "airplane ->" and second.startswith("automob") and second.endswith(" (0.97)")
    long = mistake_caption("x" * 40, "y" * 40, 0.5, 108, font_px)
    assert long[0].endswith("…") and long[1].endswith("… (0.50)")  # names are cut, never the probability
    # the caption band holds dark text below every tile image
    pixels = grid.float().mean(dim=0).numpy()
    assert (pixels[4 + 112 : 4 + 112 + 2 * round(font_px * 1.3), 4 : 4 + 112] < 100).any()


def test_reports_write_everything_in_a_fit(dashboard_run: dict[str, Any]) -> None:
    tags = dashboard_run["events"].Tags()
    texts = {t.removesuffix("/text_summary") for t in tags["tensors"]}
    assert {"reports/per_class", "reports/top_confusions", "reports/top_mistakes_table"} <= texts
    assert {"reports/confusion_matrix", "reports/top_mistakes"} <= set(tags["images"])


def test_readme_documents_every_reports_argument() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--reports.*` |"))
    for name in inspect.signature(reports.TensorBoardReports.__init__).parameters:
        if name != "self":
            assert f"`{name}:" in row, f"README's --reports.* row lacks {name!r}"
    for tag in ("reports/top_confusions", "reports/pr_curve/<class>", "custom scalars"):
        assert tag in readme
