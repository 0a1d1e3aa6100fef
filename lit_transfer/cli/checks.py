"""Checks made before training starts, so a mistake costs seconds, not an epoch: names, metrics, splits."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torchmetrics import MetricCollection

from lit_transfer.core.errors import ConfigError
from lit_transfer.core.metric_names import logged_names
from lit_transfer.models import RotNetClassifier


def check_experiment_name(name: str) -> None:
    """The run folder is named after the experiment: one path component."""
    if len(name.encode()) > 255 - len(".tmp"):
        raise ConfigError(
            f"--experiment {name[:40]!r}… is {len(name.encode())} bytes: too long for a folder name; use at most 250"
        )


def check_monitor(callback: Any, model: Any) -> None:
    """``checkpoint.monitor`` must be a metric the model logs, or checkpointing fails after a whole epoch."""
    monitor = getattr(callback, "monitor", None)
    collections = getattr(model, "metrics", None)
    if not monitor or not isinstance(collections, torch.nn.ModuleDict):
        return
    logged: set[str] = set()
    for stage in ("train", "val", "test"):
        logged.add(f"{stage}_loss")
        if f"{stage}_metrics" in collections:
            metrics = cast(MetricCollection, collections[f"{stage}_metrics"])
            logged |= logged_names(metrics)
        if isinstance(model, RotNetClassifier):  # added in its setup()
            logged |= {f"{stage}_angle_error", f"{stage}_angle_error_median", f"{stage}_parity_acc"}
    if monitor in logged or monitor.startswith("lr-"):  # lr-*: LearningRateMonitor
        return
    close = difflib.get_close_matches(monitor, sorted(logged), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"checkpoint.monitor {monitor!r} is not a metric {type(model).__name__} logs{hint} It logs: "
        f"{', '.join(sorted(n for n in logged if not n.startswith('test_')))}"
    )


def split_size(datamodule: Any, split: str) -> int:
    """Images in a split the data module has set up (0 when it has none)."""
    return len(getattr(datamodule, "_datasets", {}).get(split) or [])


def check_split_not_empty(datamodule: Any, split: str, saved: list[Any] | None, ckpt: str | None, command: str) -> None:
    """Refuse an empty val or test split before anything runs; with a checkpoint, its split (``saved``) counts.

    Training without validation is not offered: the default checkpointing monitors ``val_acc``.
    """
    if saved is not None and not any(s.split == split for s in saved):
        raise ConfigError(
            f"--ckpt_path {ckpt!r} was trained with no {split} images, and its split replaces the one "
            f"data.init_args.{split}_fraction asks for now (so no image it trained on is evaluated): the split "
            f"changed. Train a new run with data.init_args.{split}_fraction > 0 to {command} on it"
        )
    if saved is None and not split_size(datamodule, split):
        raise ConfigError(
            f"the {split} split is empty (data.init_args.{split}_fraction 0 and no {split} folder): give "
            f"data.init_args.{split}_fraction > 0 (e.g. 0.2), or a {split} folder with data.init_args.{split}_dir"
        )


def check_shards(datamodule: Any, split: str, world: int) -> None:
    """Evaluation shards are not padded (no image counted twice), so every process needs at least one image."""
    size = split_size(datamodule, split)
    if world > 1 and 0 < size < world:
        raise ConfigError(
            f"the {split} split has {size} image(s) for {world} processes: each process needs at least one. "
            "Use fewer devices for this data, or more images in the split"
        )


def experiment_from_files(files: list[str]) -> str:
    """The experiment a run of these config files belongs to: the last one that defines a model or data.

    Presets (``configs/trainer/cpu_debug.yaml``: only trainer keys) do not name experiments; without any config
    defining a model or data the last file names it, and without files the experiment is ``default``.
    """
    for name in reversed(files):
        try:
            content = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(content, dict) and ("model" in content or "data" in content):
            return Path(name).stem
    return Path(files[-1]).stem if files else "default"
