"""The run folder, ``<runs_dir>/<experiment>/version_N``: reserved atomically, so concurrent fits never share one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

# Set by the first process for the processes Lightning's DDP launcher starts (they inherit the environment), so
# every rank of one run names the same folder.
VERSION_ENV = "LIT_TRANSFER_RUN_VERSION"
EVALUATION_ENV = "LIT_TRANSFER_EVALUATION_FOLDER"  # the same for validate/test/predict: their folder's path
EVALUATIONS = "evaluations"  # <runs_dir>/<experiment>/evaluations/: evaluations of checkpoints from elsewhere

_reserved: list[Path] = []


def reserve_version(experiment_dir: str | os.PathLike[str], prefix: str = "version_") -> int:
    """Create the next free ``<prefix>N`` folder (``version_N``) under ``experiment_dir`` and return ``N``.

    ``mkdir`` either creates the folder or fails because it exists, so two fits started at the same moment (a sweep
    launched with ``&``) get different folders where a list-then-create would give both the same.
    """
    root = Path(experiment_dir)
    missing = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    _reserved.extend(reversed(missing))  # released innermost first, after the version folder
    cut = len(prefix)
    taken = [int(p.name[cut:]) for p in root.glob(f"{prefix}*") if p.name[cut:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"{prefix}{version}").mkdir()
        except FileExistsError:
            version += 1
            continue
        _reserved.append(root / f"{prefix}{version}")
        return version


def release_unused() -> None:
    """Remove reserved run folders (and the parents made for them) still empty: a run refused before it wrote."""
    while _reserved:
        folder = _reserved.pop()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only ever succeeds on an empty folder


def keep_reserved() -> None:
    """Forget reservations of earlier runs in this process: their folders are theirs now, whatever they hold."""
    _reserved.clear()


def run_dir(trainer: Any) -> Path | None:
    """The run folder every run file goes to (the logger's ``log_dir``), or ``None`` when the run has none.

    ``None`` under ``fast_dev_run`` (Lightning swaps the logger for a dummy) and with ``--trainer.logger false``:
    files are then not written at all, rather than into the working directory, where they could overwrite the
    user's own. Not ``trainer.log_dir``: under DDP that is a collective, and this is called on rank 0 alone.
    """
    if trainer is None or getattr(trainer, "fast_dev_run", False) or getattr(trainer, "logger", None) is None:
        return None
    log_dir = getattr(trainer.logger, "log_dir", None)
    return Path(log_dir) if log_dir else None
