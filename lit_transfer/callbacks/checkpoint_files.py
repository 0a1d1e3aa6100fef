"""The checkpoint folder's files: which checkpoints load, the newest that does, and temporaries of killed writers."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_transfer.callbacks.checkpoint_io import TEMP_PATTERN
from lit_transfer.core.checkpoints import CheckpointLoadError, load_checkpoint

BEST_NAME = "best"  # best.ckpt: always the best checkpoint by the monitored metric, for predict/export/validate


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _pid_reused(pid: int, written: float) -> bool:
    """Whether live process ``pid`` cannot be the writer of a file last written at ``written`` (epoch seconds).

    Only when provably so: it started after the write and is no Python or lit_transfer process. Anything unknown
    (no ``/proc``, unreadable) counts as the writer.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").lower()
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:6] == "btime "
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    if any(word in cmdline for word in (b"python", b"lit_transfer", b"lit-transfer", b"torchrun")):
        return False
    return started > written + 2.0  # btime has one-second resolution


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries (``.{name}.ckpt.tmp-{pid}``) left in ``folder`` by writers killed mid-write.

    A temporary is stale when its pid is not running, or is running but is a later, unrelated process (see
    :func:`_pid_reused`); this process's own and those of any other live writer are kept. Returns what was deleted.
    """
    removed: list[Path] = []
    try:
        candidates = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = TEMP_PATTERN.match(path.name)
        if match is None or path.is_symlink() or not path.is_file():
            continue
        pid = int(match["pid"])
        if pid == os.getpid():
            continue
        try:
            written = path.stat().st_mtime
            if _pid_alive(pid) and not _pid_reused(pid, written):
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed)
        rank_zero_info(
            f"removed {len(removed)} temporary file(s) of interrupted checkpoint writes in {folder}: {names}"
        )
    return removed


def is_valid_checkpoint(path: str | Path) -> str | None:
    """``None`` when ``path`` loads as a checkpoint, else the reason it does not."""
    try:
        load_checkpoint(path, require_state_dict=True)
    except CheckpointLoadError as err:
        return err.reason
    return None


def newest_valid_checkpoint(folders: list[Path]) -> Path | None:
    """The most recent checkpoint in ``folders`` that loads; unreadable ones are reported and passed over.

    That includes ``interrupted.ckpt`` (a mid-epoch SIGTERM save) when it is the newest: the training loader resumes
    at the batch where it stopped.
    """
    candidates = [
        p
        for folder in folders
        for p in folder.glob("*.ckpt")
        if p.stem != BEST_NAME  # best.ckpt is another name of a file
    ]
    for path in sorted(candidates, key=lambda p: (p.stat().st_mtime, p.name.startswith("last")), reverse=True):
        reason = is_valid_checkpoint(path)
        if reason is None:
            return path
        rank_zero_warn(f"skipping unreadable checkpoint {str(path)!r} ({reason}); trying an older one")
    return None
