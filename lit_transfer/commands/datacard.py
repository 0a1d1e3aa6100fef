"""The data card (``python -m lit_transfer stats --config X.yaml``): counts, sizes, modes, duplicates, mean/std.

For the data module a config names, every file of every split is read once: its bytes are hashed (sha256, to find
duplicates and train/test leaks), its header gives format, mode, size and EXIF orientation, and it is decoded the
way training decodes it (so unreadable files are reported with the reason before a run crashes on them). Training
images also pass through the evaluation resize and center crop, and their pixels are summed exactly (integer sums of
``x`` and ``x²``) into the per-channel mean and std that ``normalize`` can use.

The card goes to ``<out>/datacard.json``, two PNG plots (``class_counts.png``, ``sizes.png``), TensorBoard events
in ``<out>`` (the plots, size histograms and the summary as text) and the console.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_transfer.commands.charts import plot_class_counts, plot_sizes
from lit_transfer.core.errors import ConfigError
from lit_transfer.data.base import BaseImageDataModule
from lit_transfer.data.images import check_image_header, load_rgb
from lit_transfer.data.splits import SPLITS, Sample
from lit_transfer.data.stats import ChannelStats
from lit_transfer.data.transforms import EVAL_CROP_RATIO, Transform, eval_transform

DATACARD_NAME = "datacard.json"
EXIF_ORIENTATION = 0x0112
HISTOGRAM_BINS = 20


# --------------------------------------------------------------------------- reading every file once


class _FileInspector(Dataset):
    """One record per file: hash, header facts, decode check and, with a transform, exact pixel sums."""

    def __init__(
        self,
        root: Path,
        samples: Sequence[Sample],
        transform: Transform,
        pixels_of: str = "train",
        min_side: int | None = None,
    ) -> None:
        self.root = root
        self.min_side = min_side
        self.samples = list(samples)
        self.transform = transform
        self.pixels_of = pixels_of

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        path = self.root / sample.path
        record: dict[str, Any] = {"index": index, "sha256": None, "format": None, "mode": None, "error": None}
        record.update(width=None, height=None, orientation=1, sums=None, squares=None, pixels=0)
        try:
            data = path.read_bytes()
        except OSError as err:
            record["error"] = f"{type(err).__name__}: {err}"
            return record
        record["sha256"] = hashlib.sha256(data).hexdigest()
        reason = check_image_header(path)  # the same screening as the data module's, with the same words
        if reason is not None:
            record["error"] = reason
            return record
        try:
            with Image.open(io.BytesIO(data)) as img:  # the header only: no pixel is decoded here
                width, height = img.size
                orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
                record.update(format=img.format, mode=img.mode, orientation=orientation)
            if orientation in (5, 6, 7, 8):  # transposed or rotated by 90°: upright, width and height swap
                width, height = height, width
            record.update(width=width, height=height)
            image = load_rgb(path, self.min_side)  # exactly what training decodes
            if sample.split == self.pixels_of:
                x = self.transform(image).to(torch.int64).flatten(1)
                record.update(sums=x.sum(dim=1).tolist(), squares=(x * x).sum(dim=1).tolist(), pixels=x.shape[1])
        except Exception as err:  # any decoder failure is a finding about the file, not a crash of the card
            record["error"] = f"{type(err).__name__}: {err}"
        return record


def _identity(record: Any) -> Any:
    # the collate_fn of a loader with batch_size=None gets one record (a dict), not a list: hand it on as it is
    return record


def inspect_files(
    root: Path, samples: Sequence[Sample], transform: Transform, num_workers: int = 0, min_side: int | None = None
) -> tuple[list[dict[str, Any]], ChannelStats]:
    """Read every sample once; return one record per sample (in order) and the channel sums of the train split.

    Args:
        root: folder the sample paths are relative to.
        samples: the files, with their split.
        transform: the evaluation transform that training images pass through before their pixels are summed.
        num_workers: processes reading files.
        min_side: decode large JPEGs down to this shorter side, as the data module does (``decode_scale``).
    """
    inspector = _FileInspector(root, samples, transform, min_side=min_side)
    loader = DataLoader(inspector, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    records: list[dict[str, Any]] = [{}] * len(samples)
    stats = ChannelStats()
    for record in loader:
        records[record["index"]] = record
        if record["pixels"]:
            stats.add(record["sums"], record["squares"], record["pixels"], integer=True)
    return records, stats


def distribution(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Min, median, mean, max and histogram (``edges``, ``counts``) of ``values``; ``None`` entries if empty."""
    if not len(values):
        return {"min": None, "median": None, "mean": None, "max": None, "histogram": {"edges": [], "counts": []}}
    array = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(array, bins=max(1, min(bins, len(np.unique(array)))))
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "mean": float(array.mean()),
        "max": float(array.max()),
        "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
    }


def _split_card(class_names: Sequence[str], rows: Sequence[tuple[Sample, dict[str, Any]]]) -> dict[str, Any]:
    counts = Counter(class_names[s.label] for s, _ in rows)
    per_class = {name: counts.get(name, 0) for name in class_names}
    present = [c for c in per_class.values() if c > 0]
    sized = [r for _, r in rows if r["width"]]
    return {
        "images": len(rows),
        "class_counts": per_class,
        "empty_classes": [name for name, c in per_class.items() if c == 0],
        "imbalance_ratio": round(max(present) / min(present), 4) if present else None,
        "width": distribution([r["width"] for r in sized]),
        "height": distribution([r["height"] for r in sized]),
        "aspect_ratio": distribution([r["width"] / r["height"] for r in sized]),
        "modes": dict(Counter(r["mode"] for _, r in rows if r["mode"]).most_common()),
        "formats": dict(Counter(r["format"] for _, r in rows if r["format"]).most_common()),
        "exif_rotated": [{"path": s.path, "orientation": r["orientation"]} for s, r in rows if r["orientation"] != 1],
        "unreadable": [{"path": s.path, "error": r["error"]} for s, r in rows if r["error"]],
    }


def _duplicates(class_names: Sequence[str], samples: Sequence[Sample], records: Sequence[dict]) -> dict[str, Any]:
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for sample, record in zip(samples, records, strict=True):
        if record["sha256"]:
            by_hash[record["sha256"]].append(sample)
    groups = []
    for digest, group in sorted(by_hash.items(), key=lambda kv: kv[1][0].path):
        if len(group) < 2:
            continue
        splits = sorted({s.split for s in group}, key=SPLITS.index)
        groups.append(
            {
                "sha256": digest,
                "files": [{"path": s.path, "class": class_names[s.label], "split": s.split} for s in group],
                "splits": splits,
                "across_splits": len(splits) > 1,
                "label_conflict": len({s.label for s in group}) > 1,
            }
        )
    return {
        "groups": groups,
        "within_split": sum(not g["across_splits"] for g in groups),
        "across_splits": sum(g["across_splits"] for g in groups),
        "label_conflicts": sum(g["label_conflict"] for g in groups),
    }


def build_datacard(
    dm: BaseImageDataModule, num_workers: int | None = None
) -> tuple[dict[str, Any], list[tuple[Sample, dict[str, Any]]]]:
    """Set up ``dm`` for fit and compute its data card; also returns every ``(sample, file record)`` pair.

    The data module's own header screening is turned off first, so that unreadable files are reported in the card
    instead of being dropped (or stopping the setup).

    Args:
        dm: the data module; ``setup("fit")`` is called on it.
        num_workers: processes reading files; ``None`` uses the data module's ``num_workers``.
    """
    if hasattr(dm, "check_images"):
        dm.check_images = False
    dm.setup("fit")
    samples = list(dm.samples)
    workers = dm.num_workers if num_workers is None else num_workers
    # the data module's own evaluation transform, so that a subclass that changes it is measured as it trains
    reference = dm.make_dataset(dm.data_root, [], [], "val")
    transform = getattr(reference, "transform", None) or eval_transform(dm.image_size)
    min_side = getattr(reference, "min_side", None)
    records, stats = inspect_files(Path(dm.data_root), samples, transform, workers, min_side)
    rows = list(zip(samples, records, strict=True))
    mean, std = stats.result() if stats.count else (None, None)
    resize = round(dm.image_size / EVAL_CROP_RATIO)
    card: dict[str, Any] = {
        "data_module": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "root": str(dm.data_root),
        "image_size": dm.image_size,
        "seed": dm.seed,
        "num_classes": dm.num_classes,
        "class_names": list(dm.class_names),
        "images": len(samples),
        "splits": {split: _split_card(dm.class_names, [r for r in rows if r[0].split == split]) for split in SPLITS},
        "duplicates": _duplicates(dm.class_names, samples, records),
        "channel_stats": {
            "split": "train",
            "transform": f"eval: resize short side to {resize}, center crop {dm.image_size}",
            "pixels_per_channel": stats.count,
            "mean": mean,
            "std": std,
        },
    }
    return card, rows


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_summary(card: dict[str, Any]) -> str:
    """The data card as readable plain text."""
    lines = [
        f"data card: {card['data_module'].rsplit('.', 1)[-1]}, {card['num_classes']} classes, "
        f"{card['images']:,} images in {card['root']}",
        "",
        f"{'split':<6} {'images':>8} {'classes':>8} {'per class min/median/max':>26} {'imbalance':>10}",
    ]
    for split, s in card["splits"].items():
        counts = list(s["class_counts"].values())
        spread = f"{min(counts)} / {np.median(counts):g} / {max(counts)}" if counts else "-"
        ratio = "-" if s["imbalance_ratio"] is None else f"{s['imbalance_ratio']:.2f}"
        present = len(counts) - len(s["empty_classes"])
        lines.append(f"{split:<6} {s['images']:>8,} {present:>8} {spread:>26} {ratio:>10}")
    train = card["splits"]["train"]
    if train["images"]:
        ranked = sorted(train["class_counts"].items(), key=lambda kv: (kv[1], kv[0]))
        lines.append("train, fewest: " + ", ".join(f"{k} {v}" for k, v in ranked[:5]))
        lines.append("train, most:   " + ", ".join(f"{k} {v}" for k, v in ranked[::-1][:5]))
    lines.append("")
    every = {split: s for split, s in card["splits"].items() if s["images"]}
    for key in ("width", "height", "aspect_ratio"):
        digits = 2 if key == "aspect_ratio" else 0
        parts = [
            f"{split} {_fmt(s[key]['min'], digits)}/{_fmt(s[key]['median'], digits)}/{_fmt(s[key]['max'], digits)}"
            for split, s in every.items()
        ]
        lines.append(f"{key.replace('_', ' ')} (min/median/max): " + "; ".join(parts))
    modes: Counter[str] = Counter()
    for s in card["splits"].values():
        modes.update(s["modes"])
    lines.append("colour modes: " + (", ".join(f"{m} {n:,}" for m, n in modes.most_common()) or "-"))
    rotated = [r for s in card["splits"].values() for r in s["exif_rotated"]]
    lines.append(f"EXIF-rotated files (shown upright): {len(rotated)}")
    unreadable = [(split, u) for split, s in card["splits"].items() for u in s["unreadable"]]
    lines.append(f"unreadable files: {len(unreadable)}")
    lines += [f"  {split}: {u['path']}: {u['error']}" for split, u in unreadable[:20]]
    dup = card["duplicates"]
    lines.append(
        f"duplicate files (same bytes): {len(dup['groups'])} groups, {dup['across_splits']} across splits "
        f"(train/val/test leaks), {dup['label_conflicts']} with different classes"
    )
    for group in [g for g in dup["groups"] if g["across_splits"]][:10]:
        lines.append("  leak: " + ", ".join(f"{f['path']} ({f['split']})" for f in group["files"]))
    cs = card["channel_stats"]
    if cs["mean"] is not None:
        lines.append(
            f"train channel mean {[round(v, 4) for v in cs['mean']]}, std {[round(v, 4) for v in cs['std']]} "
            f"(exact over {cs['pixels_per_channel']:,} pixels per channel after {cs['transform']})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def write_datacard(
    card: dict[str, Any], rows: Sequence[tuple[Sample, dict[str, Any]]], out_dir: str | Path
) -> dict[str, Path]:
    """Write ``datacard.json``, the PNG plots and TensorBoard events into ``out_dir``; returns the written paths."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / DATACARD_NAME, "class_counts": out / "class_counts.png", "sizes": out / "sizes.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(paths["json"])
    plots = {"class_counts": plot_class_counts(card), "sizes": plot_sizes(rows)}
    for name, image in plots.items():
        image.save(paths[name])
    for old in out.glob("events.out.tfevents.*"):  # one card per folder: a rerun replaces the previous events
        old.unlink()
    writer = SummaryWriter(log_dir=str(out))
    try:
        for name, image in plots.items():
            writer.add_image(f"datacard/{name}", np.asarray(image), 0, dataformats="HWC")
        writer.add_text("datacard/summary", "```\n" + format_summary(card) + "\n```", 0)
        for split in SPLITS:
            sized = [r for s, r in rows if s.split == split and r["width"]]
            if sized:
                writer.add_histogram(f"datacard/{split}/width", np.array([r["width"] for r in sized]), 0)
                writer.add_histogram(f"datacard/{split}/height", np.array([r["height"] for r in sized]), 0)
                aspect = np.array([r["width"] / r["height"] for r in sized])
                writer.add_histogram(f"datacard/{split}/aspect_ratio", aspect, 0)
    finally:
        writer.close()
    paths["events"] = out
    return paths


# --------------------------------------------------------------------------- the command


def stats(
    data: BaseImageDataModule,
    out: str | None = None,
    experiment: str | None = None,
    runs_dir: str = "runs",
) -> None:
    """Write the data card of a config's data module, and print its summary.

    Give the experiment's fit config as it is (``--config X.yaml``; ``--data.init_args.*`` options override it):
    its sections other than ``data`` are accepted and not used, so no model is built and no weights are fetched.

    Args:
        data: the data module, as in a fit config (``class_path`` and ``init_args``).
        out: folder of the card; default: <runs_dir>/<experiment>/datacard.
        experiment: run name the default folder is named after; default: the last config file's name, else "stats".
        runs_dir: folder holding one folder per experiment.
    """
    try:
        card, rows = build_datacard(data)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        raise ConfigError(str(err)) from err
    paths = write_datacard(card, rows, out or Path(runs_dir or "runs") / (experiment or "stats") / "datacard")
    print(format_summary(card))
    print(f"\nwrote {paths['json']}, {paths['class_counts'].name}, {paths['sizes'].name} and TensorBoard events there")
