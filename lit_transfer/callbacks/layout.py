"""The TensorBoard custom-scalars layout of a run: train and val on one chart per metric, and the learning rates.

TensorBoard's CUSTOM SCALARS tab shows one category per layout title (the experiment), with a chart per metric whose
lines are the scalar tags matching its regular expressions. The layout is written once per run folder: a resumed run
finds it in the folder's event files and does not write it again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tensorboard.plugins.custom_scalar import layout_pb2  # type: ignore[import-untyped]
from tensorboard.plugins.custom_scalar.metadata import CONFIG_SUMMARY_TAG  # type: ignore[import-untyped]
from torchmetrics import MetricCollection

from lit_transfer.core.metric_names import logged_names

STAGE_PREFIXES = ("train", "val")
# Lightning's LearningRateMonitor logs lr-<Optimizer>[/<group>] and, when asked, the same with -momentum and
# -weight_decay appended: only the learning rates go on the chart.
LR_REGEX = r"^lr-(?!.*-(momentum|weight_decay)$)"
# metric families drawn on one chart: (title, metric base names, regex of <stage>_<base>)
FAMILIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("loss", ("loss",), r"^(train|val)_loss$"),
    ("accuracy", ("acc", "acc_top5"), r"^(train|val)_acc(_top5)?$"),
    ("F1", ("f1",), r"^(train|val)_f1$"),
    ("calibration error (ECE)", ("ece",), r"^(train|val)_ece$"),  # val only: training images are augmented
    ("angle error", ("angle_error", "angle_error_median"), r"^(train|val)_angle_error(_median)?$"),
    ("parity accuracy", ("parity_acc",), r"^(train|val)_parity_acc$"),
)


def logged_metric_names(pl_module: Any) -> set[str]:
    """The epoch scalars a lit_transfer classifier logs for training and validation (``train_loss``, ``val_acc``, …).

    Read from its ``losses`` and ``<stage>_metrics`` collections (see ``lit_transfer.models.metrics``); empty for a
    module without them.
    """
    names: set[str] = set()
    losses, metrics = getattr(pl_module, "losses", None), getattr(pl_module, "metrics", None)
    for stage in STAGE_PREFIXES:
        if losses is not None and f"{stage}_loss" in losses:
            names.add(f"{stage}_loss")
        collection = metrics[f"{stage}_metrics"] if metrics is not None and f"{stage}_metrics" in metrics else None
        if isinstance(collection, MetricCollection):
            names |= logged_names(collection)  # prefixed: val_acc, val_f1, …
    return names


def scalar_charts(metric_names: Iterable[str], learning_rates: bool) -> dict[str, list[Any]]:
    """``{chart title: ["Multiline", [tag regex]]}`` for the metric families present in ``metric_names``.

    Each chart's regex matches at least one of ``metric_names``; the regexes do not depend on which members of a
    family are logged (top-5 accuracy or not), so runs of one experiment merge into the same charts.
    """
    names = set(metric_names)
    charts: dict[str, list[Any]] = {}
    for title, bases, regex in FAMILIES:
        if any(f"{stage}_{base}" in names for stage in STAGE_PREFIXES for base in bases):
            charts[title] = ["Multiline", [regex]]
    known = {f"{s}_{b}" for s in STAGE_PREFIXES for _, bases, _ in FAMILIES for b in bases}
    for base in sorted({n.split("_", 1)[1] for n in names - known if "_" in n}):
        charts[base] = ["Multiline", [rf"^(train|val)_{re.escape(base)}$"]]
    if learning_rates:
        charts["learning rate"] = ["Multiline", [LR_REGEX]]
    return charts


def layout_proto(layout: dict[str, dict[str, list[Any]]]) -> layout_pb2.Layout:
    """The ``Layout`` proto that ``SummaryWriter.add_custom_scalars(layout)`` writes."""
    from torch.utils.tensorboard.summary import custom_scalars

    proto = layout_pb2.Layout()
    proto.ParseFromString(custom_scalars(layout).value[0].tensor.string_val[0])
    return proto


def layouts_in(log_dir: str | os.PathLike[str], first_events: int = 16) -> list[layout_pb2.Layout]:
    """The custom-scalars layouts among the first ``first_events`` events of each event file of ``log_dir``.

    The layout is written at fit start, so it is near the beginning of its file; reading whole files would take
    seconds per 10 MB of images at every resume. A layout written again anyway is harmless: TensorBoard keeps the
    last one.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # type: ignore[import-untyped]

    found: list[layout_pb2.Layout] = []
    for path in sorted(Path(log_dir).glob("*tfevents*")):
        try:
            for k, event in enumerate(EventFileLoader(os.fspath(path)).Load()):
                if k >= first_events:
                    break
                for value in event.summary.value:
                    if value.tag == CONFIG_SUMMARY_TAG:
                        layout = layout_pb2.Layout()
                        layout.ParseFromString(value.tensor.string_val[0])
                        found.append(layout)
        except Exception:  # a truncated file (a killed run) ends the reading of that file only
            continue
    return found


def write_layout(writer: Any, log_dir: str | os.PathLike[str], layout: dict[str, dict[str, list[Any]]]) -> bool:
    """Write ``layout`` with ``writer`` unless the run folder holds it already; whether it was written.

    ``layout`` is ``{category title: {chart title: ["Multiline", [tag regex, …]]}}``, as
    ``SummaryWriter.add_custom_scalars`` takes it.
    """
    proto = layout_proto(layout)
    if any(existing == proto for existing in layouts_in(log_dir)):
        return False
    writer.add_custom_scalars(layout)
    writer.flush()
    return True
