"""``python -m lit_transfer runs``: one row per run folder, from the run folders alone (no TensorBoard server).

Each ``<runs_dir>/<experiment>/version_N/`` with a ``run_summary.json`` (written by
:class:`lit_transfer.callbacks.run_summary.RunSummary`) or, for runs written before it existed, a ``config.yaml`` and
``checkpoints/`` is a row. The summaries of separate ``test`` runs are not rows: their ``test_acc`` goes to the row
of the run whose checkpoint they tested.
"""

from __future__ import annotations

import csv as csv_module
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lit_transfer.callbacks.run_summary import RUNNING, read_summary, short_name
from lit_transfer.core.errors import ConfigError

DIED = "died"  # "running", but its process is gone from this host: killed (kill -9, out of memory) or crashed
UNKNOWN = "unknown"  # a run from before run_summary.json that did not reach its max_epochs
# the table's columns; numeric ones sort descending, the others ascending
COLUMNS = (
    "experiment", "version", "backbone", "weights", "freeze", "val_acc", "best_epoch", "test_acc", "epochs",
    "wall_time", "status",
)  # fmt: skip
NUMERIC = {"version", "val_acc", "best_epoch", "test_acc", "epochs", "wall_time"}
CSV_COLUMNS = (*COLUMNS[:8], "epochs_done", "planned_epochs", "wall_time_s", "status")
_ALIASES = {"epochs_done": "epochs", "planned_epochs": "epochs", "wall_time_s": "wall_time"}
_VERSION = re.compile(r"version_(\d+)")
_CHECKPOINT_ACC = re.compile(r"epoch(\d+)-val_acc(\d+(?:\.\d+)?)")


def runs(runs_dir: str = "runs", sort: str | None = None, csv: bool = False) -> None:
    """List the runs of a runs folder, one row per experiment/version_N.

    Columns: backbone, weights, freeze, best val_acc and its epoch, test_acc, epochs done/planned, wall time and
    status (finished, interrupted, failed, running; died: running, but its process is gone from this host).

    Args:
        runs_dir: the runs folder (fit's --runs_dir).
        sort: column to sort by: metrics (val_acc, test_acc, epochs, wall_time, ...) descending, names ascending.
        csv: print CSV instead of a table.
    """
    key = _ALIASES.get(sort, sort) if sort else None
    if key is not None and key not in COLUMNS:
        raise ConfigError(f"--sort {sort}: not a column; use one of {', '.join(COLUMNS)}")
    folder = Path(runs_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--runs_dir {runs_dir}: not a folder")
    rows = collect_runs(folder)
    if not rows:
        print(f"no runs in {folder}" if folder.is_dir() else f"no runs folder at {folder}")
        return
    rows = sort_rows(rows, key)
    if csv:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
        return
    print(format_table(rows))


def collect_runs(folder: Path) -> list[dict[str, Any]]:
    """One row per ``<experiment>/version_N`` of ``folder`` (test-only runs add their test_acc to the tested run)."""
    rows: list[dict[str, Any]] = []
    tests: dict[Path, tuple[str, float]] = {}  # run folder -> (when, test_acc) of its newest separate test
    # a separate test writes into version_N/test_K/ (or <experiment>/evaluations/test_K/; older versions of
    # lit_transfer: a version_N of its own)
    evaluations = [*folder.glob("*/version_*/test_*"), *folder.glob("*/evaluations/test_*")] if folder.is_dir() else []
    for run in [*sorted(evaluations), *(sorted(folder.glob("*/version_*")) if folder.is_dir() else [])]:
        summary = read_summary(run) if run.is_dir() else None
        if summary is not None and summary.get("command") == "test":
            tested = summary.get("tested_checkpoint")
            if tested and summary.get("test_acc") is not None:
                owner = Path(tested).resolve().parent.parent
                when = str(summary.get("ended_at") or "")
                if owner not in tests or tests[owner][0] <= when:
                    tests[owner] = (when, float(summary["test_acc"]))
            continue
        match = _VERSION.fullmatch(run.name)
        if match is None or not run.is_dir() or run.parent.parent != folder:
            continue
        row = row_from_summary(summary) if summary is not None else row_from_files(run)
        if row is None:
            continue
        rows.append({"experiment": run.parent.name, "version": int(match.group(1)), "path": run.resolve(), **row})
    for row in rows:
        if row.get("test_acc") is None and row["path"] in tests:
            row["test_acc"] = tests[row["path"]][1]
    return rows


def row_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """A row from ``run_summary.json``; a ``running`` run whose process is gone from this host is ``died``."""
    hparams = summary.get("hparams") or {}
    status = str(summary.get("status") or UNKNOWN)
    if status == RUNNING and summary.get("host") == socket.gethostname() and not _alive(summary.get("pid")):
        status = DIED
    return {
        "backbone": hparams.get("backbone"),
        "weights": hparams.get("weights"),
        "freeze": hparams.get("freeze"),
        "val_acc": summary.get("best_val_acc"),
        "best_epoch": summary.get("best_epoch"),
        "test_acc": summary.get("test_acc"),
        "epochs_done": summary.get("epochs_done"),
        "planned_epochs": summary.get("planned_epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "status": status,
        "error": summary.get("error"),
    }


def row_from_files(run: Path) -> dict[str, Any] | None:
    """A row of a run written before ``run_summary.json``: ``config.yaml`` and the checkpoints' names and epoch.

    ``None`` for folders without checkpoints (``validate``, ``predict`` and ``test`` runs).
    """
    checkpoints = run / "checkpoints"
    if not checkpoints.is_dir():
        return None
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    model = config.get("model") or {}
    init = model.get("init_args", model) if isinstance(model, dict) else {}
    planned = (config.get("trainer") or {}).get("max_epochs")
    best: tuple[float, int] | None = None
    for path in checkpoints.glob("epoch*.ckpt"):
        found = _CHECKPOINT_ACC.search(path.name)
        if found and (best is None or float(found.group(2)) > best[0]):
            best = (float(found.group(2)), int(found.group(1)))
    done = _checkpoint_epochs(checkpoints / "last.ckpt")
    interrupted = checkpoints / "interrupted.ckpt"
    last = checkpoints / "last.ckpt"
    if interrupted.is_file() and (not last.is_file() or interrupted.stat().st_mtime >= last.stat().st_mtime):
        status = "interrupted"
    elif done is not None and planned is not None and done >= int(planned):
        status = "finished"
    else:
        status = UNKNOWN
    return {
        "backbone": short_name(init.get("backbone", "resnet18")),
        "weights": short_name(init.get("weights")),
        "freeze": short_name(init.get("freeze", "none")),
        "val_acc": best[0] if best else None,
        "best_epoch": best[1] if best else None,
        "test_acc": None,
        "epochs_done": done,
        "planned_epochs": planned,
        "wall_time_s": None,
        "status": status,
    }


def _checkpoint_epochs(path: Path) -> int | None:
    """Epochs completed when an epoch-end checkpoint was written (its ``epoch`` + 1), or ``None``."""
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable checkpoint: the row just lacks its epochs
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) + 1 if isinstance(epoch, int) else None


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _sort_value(row: dict[str, Any], column: str) -> Any:
    return (
        row.get("epochs_done")
        if column == "epochs"
        else row.get("wall_time_s")
        if column == "wall_time"
        else row.get(column)
    )


def sort_rows(rows: list[dict[str, Any]], column: str | None) -> list[dict[str, Any]]:
    """Rows by experiment and version, or by ``column``: numbers descending, text ascending, missing values last."""
    ordered = sorted(rows, key=lambda r: (str(r["experiment"]), int(r["version"])))
    if column is None:
        return ordered
    present = [r for r in ordered if _sort_value(r, column) is not None]
    missing = [r for r in ordered if _sort_value(r, column) is None]
    if column in NUMERIC and column != "version":
        present.sort(key=lambda r: float(_sort_value(r, column)), reverse=True)
    else:
        present.sort(key=lambda r: (int if column == "version" else str)(_sort_value(r, column)))
    return present + missing


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: "" if value is None else f"{float(value):.{digits}f}"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return ""
    total = round(float(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _cells(row: dict[str, Any]) -> list[str]:
    done, planned = row.get("epochs_done"), row.get("planned_epochs")
    epochs = "" if done is None and planned is None else f"{'?' if done is None else done}/{planned or '?'}"
    status = str(row.get("status") or "")
    if row.get("error"):
        error = str(row["error"])
        status += f" ({error[:57]}...)" if len(error) > 60 else f" ({error})"
    values = {
        **{c: "" if row.get(c) is None else str(row[c]) for c in COLUMNS},
        "version": f"version_{row['version']}",
        "weights": _file_name(row.get("weights")),
        "val_acc": _number(4)(row.get("val_acc")),
        "test_acc": _number(4)(row.get("test_acc")),
        "epochs": epochs,
        "wall_time": _duration(row.get("wall_time_s")),
        "status": status,
    }
    return [values[c] for c in COLUMNS]


def _file_name(weights: Any) -> str:
    """A weights file by its name (the table stays readable; ``--csv`` keeps the whole path), else the value."""
    if weights is None:
        return ""
    text = str(weights)
    return Path(text).name if "/" in text or "\\" in text else text


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table with a header line."""
    table = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table)
