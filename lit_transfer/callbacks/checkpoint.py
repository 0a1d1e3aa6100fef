"""Checkpointing that never loses work: atomic writes, ``last.ckpt`` every epoch, a checkpoint on SIGTERM."""

from __future__ import annotations

import io
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning_utilities.core.apply_func import apply_to_collection

from lit_transfer.callbacks.signals import sigterm_received
from lit_transfer.core.checkpoints import CheckpointLoadError, checkpoint_error, load_checkpoint
from lit_transfer.core.lightning_private import (
    checkpoint_schedule,
    dump_checkpoint,
    last_saved_step,
    save_last,
    saves_on_train_epoch_end,
    skips_saving,
)

INTERRUPTED_NAME = "interrupted"
BEST_NAME = "best"  # best.ckpt: always the best checkpoint by the monitored metric, for predict/export/validate
# the temporary name AtomicCheckpointIO writes beside a target: ".{name}.tmp-{pid}"
TEMP_PATTERN = re.compile(r"^\.(?P<name>[^/]+\.ckpt)\.tmp-(?P<pid>[1-9][0-9]*)$")


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically on local disks and load them with ``weights_only=True``.

    The file is written beside its target under a temporary name, flushed and fsynced, then renamed over the target
    (and the folder fsynced), so a kill at any moment leaves either the old checkpoint or the new one, never half of
    one; a folder that refuses writes is an error, not silence. After a failed write, removals of old checkpoints
    and the ``best.ckpt`` alias are skipped, so a full disk never costs the last good checkpoint. Remote (fsspec
    URL) paths use Lightning's writer.
    """

    failed_save: str | None = None  # the first checkpoint whose write failed; removals and links are skipped after it

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Serialize ``checkpoint`` to ``path`` atomically."""
        try:
            self._save(checkpoint, path, storage_options)
        except BaseException:
            if self.failed_save is None:
                self.failed_save = str(path)
            raise

    def _save(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = _temp_name(target)
        try:
            self._write_file(tmp, buffer.getbuffer())
            os.replace(tmp, target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not write checkpoint {str(target)!r}: {err}") from err
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _write_file(path: Path, data: memoryview) -> None:
        """Write ``data`` to ``path`` and fsync it."""
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _skip_after_failure(self, what: str) -> bool:
        # a removal or alias queued behind a save that failed would lose the only good checkpoint: keep the old files
        if self.failed_save is None:
            return False
        rank_zero_warn(f"not {what}: writing checkpoint {self.failed_save!r} failed, so the older checkpoints are kept")
        return True

    def remove_checkpoint(self, path: Any) -> None:
        """Remove ``path``, unless a checkpoint write failed before (then the old file is kept)."""
        if not self._skip_after_failure(f"removing {str(path)!r}"):
            super().remove_checkpoint(path)

    def link_checkpoint(self, source: Any, alias: Any) -> None:
        """Make ``alias`` name the same file as ``source`` (a hard link, a copy where links fail), atomically.

        Skipped once a checkpoint write failed, so ``alias`` keeps naming the last checkpoint written in full.
        """
        source, alias = Path(source), Path(alias)
        if self._skip_after_failure(f"pointing {str(alias)!r} at {str(source)!r}"):
            return
        tmp = _temp_name(alias)
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(source, tmp)
            except OSError:  # file systems without hard links
                shutil.copyfile(source, tmp)
            os.replace(tmp, alias)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not point {str(alias)!r} at {str(source)!r}: {err}") from err

    def teardown(self) -> None:
        """End of a Trainer run: the failure, if any, was raised; a later run starts afresh."""
        self.failed_save = None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a checkpoint; pickled code is never executed (``weights_only=True`` whatever is asked)."""
        if map_location is None:
            map_location = "cpu"
        if "://" not in str(path):
            return load_checkpoint(path, map_location=map_location)  # CheckpointLoadError (a ValueError) says why not
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise checkpoint_error(path, err) from err


class AsyncAtomicCheckpointIO(AtomicCheckpointIO):
    """:class:`AtomicCheckpointIO` that writes in a background thread, so training goes on while a checkpoint is saved.

    The training loop only waits for a copy of the checkpoint's tensors in CPU memory (taken at once, so later steps
    cannot change what is saved); serialization, the write, the fsyncs and the rename happen in one background
    thread, in order, with removals of old checkpoints queued behind the saves. A failed write is raised at the next
    save, removal, load or at :meth:`teardown` (the end of every Trainer run), so it is never lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _submit(self, fn: Any, *args: Any) -> None:
        self._raise_failures()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_transfer-checkpoint")
        self._pending.append(self._executor.submit(fn, *args))

    def _raise_failures(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()  # re-raises the error of a failed write

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Copy the tensors to CPU now; serialize and write ``path`` atomically in the background."""
        snapshot = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
        self._submit(AtomicCheckpointIO.save_checkpoint, self, snapshot, path, storage_options)

    def link_checkpoint(self, source: Any, alias: Any) -> None:
        """Point ``alias`` at ``source`` once the saves queued before it are on disk (never if one of them failed)."""
        self._submit(AtomicCheckpointIO.link_checkpoint, self, source, alias)

    def remove_checkpoint(self, path: Any) -> None:
        """Remove ``path`` after the saves queued before it (never if one of them failed)."""
        self._submit(AtomicCheckpointIO.remove_checkpoint, self, path)

    def wait(self) -> None:
        """Block until every queued save and removal is done; raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Load ``path`` once the queued writes are done."""
        self.wait()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def teardown(self) -> None:
        """Finish every queued write (called at the end of every Trainer run, also after an error)."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            super().teardown()


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


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch and which saves ``interrupted.ckpt`` on SIGTERM.

    ``best.ckpt`` always names the best checkpoint so far (a hard link, written after it), so commands run later in
    another process (``predict``, ``export``, ``validate``) can use the best epoch by a stable name.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was saved in the same step, so an epoch that
    does not improve the monitored metric would leave ``last.ckpt`` behind and a resume would repeat that epoch.
    """

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, cached: Lightning reads it at every hook call of every step."""
        facts = (self.monitor, self.mode, *checkpoint_schedule(self))
        cached = getattr(self, "_state_key_cache", None)
        if cached is None or cached[0] != facts:
            cached = (facts, super().state_key)
            self._state_key_cache = cached
        return cached[1]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the folder; before training writes into it, delete temporaries left by writers killed mid-write."""
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None and "://" not in str(self.dirpath):
            remove_stale_temporaries(self.dirpath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; a run folder that was moved (or renamed) keeps its checkpoints' history.

        Lightning drops ``last_model_path`` and the top-k record when the folder changed, and then writes
        ``last-v1.ckpt`` beside the moved ``last.ckpt``, which stays at its old epoch. When the saved files are found
        under the same names in the new folder, the paths are moved along instead.
        """
        saved, current = state_dict.get("dirpath"), self.dirpath
        last = state_dict.get("last_model_path") or ""
        if saved and current and saved != current and "://" not in str(current) and last:
            old, new = Path(saved), Path(current)
            if Path(last).parent == old and (new / Path(last).name).is_file():

                def moved(path: Any) -> Any:
                    return str(new / Path(path).name) if path and Path(path).parent == old else path

                state_dict = {**state_dict, "dirpath": current}
                for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                    state_dict[key] = moved(state_dict.get(key))
                state_dict["best_k_models"] = {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # a private hook of ModelCheckpoint (see lit_transfer.core.lightning_private): after every save
        super()._save_checkpoint(trainer, filepath)
        if filepath == self.best_model_path and self.dirpath is not None and trainer.is_global_zero:
            checkpoint_io = trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, AtomicCheckpointIO) and "://" not in str(filepath):
                checkpoint_io.link_checkpoint(filepath, os.path.join(self.dirpath, BEST_NAME + self.FILE_EXTENSION))

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and last_saved_step(self) != trainer.global_step:
            save_last(self, trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save top-k and last at the end of the training epoch when configured so."""
        super().on_train_epoch_end(trainer, pl_module)
        if not skips_saving(self, trainer) and saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save top-k and last after validation."""
        super().on_validation_end(trainer, pl_module)
        if not skips_saving(self, trainer) and not saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On SIGTERM (pre-emption, ``scancel``), save the progress of the current epoch as ``interrupted.ckpt``."""
        # after SIGTERM, a collective that fails because another rank has already stopped is part of the same stop
        stopping = isinstance(exception, SIGTERMException) or sigterm_received()
        if not stopping or trainer.fast_dev_run or self.dirpath is None:  # type: ignore[attr-defined]  # set, undeclared
            super().on_exception(trainer, pl_module, exception)
            return
        if not trainer.is_global_zero:
            return
        # Written by rank 0 alone, without trainer.save_checkpoint's barrier: ranks stop at different points after a
        # signal (one may be inside validation, another in a collective), and a barrier here could wait forever.
        path = os.path.join(self.dirpath, f"{INTERRUPTED_NAME}{self.FILE_EXTENSION}")
        checkpoint = dump_checkpoint(trainer)
        checkpoint_io = trainer.strategy.checkpoint_io
        checkpoint_io.save_checkpoint(checkpoint, path)
        if isinstance(checkpoint_io, AsyncAtomicCheckpointIO):
            checkpoint_io.wait()  # on disk before the process is told to stop
        rank_zero_info(f"SIGTERM: saved {path} (epoch {trainer.current_epoch}, step {trainer.global_step})")
