"""Checkpointing that never loses work: atomic writes, ``last.ckpt`` every epoch, a checkpoint on SIGTERM."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_transfer.callbacks.checkpoint_files import BEST_NAME, remove_stale_temporaries
from lit_transfer.callbacks.checkpoint_files import is_valid_checkpoint as is_valid_checkpoint  # re-exported
from lit_transfer.callbacks.checkpoint_files import newest_valid_checkpoint as newest_valid_checkpoint  # re-exported
from lit_transfer.callbacks.checkpoint_io import AsyncAtomicCheckpointIO as AsyncAtomicCheckpointIO  # re-exported
from lit_transfer.callbacks.checkpoint_io import AtomicCheckpointIO as AtomicCheckpointIO  # re-exported
from lit_transfer.callbacks.signals import sigterm_received
from lit_transfer.core.lightning_private import (
    checkpoint_schedule,
    dump_checkpoint,
    last_saved_step,
    mark_saved,
    save_last,
    saves_on_train_epoch_end,
    skips_saving,
)

INTERRUPTED_NAME = "interrupted"


def same_state(a: Any, b: Any) -> bool:
    """Whether two ``state_dict`` values are equal (tensors by value; nested dicts and lists)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch and which saves ``interrupted.ckpt`` on SIGTERM.

    ``best.ckpt`` always names the best checkpoint so far (a hard link, written after it), so commands run later in
    another process (``predict``, ``export``, ``validate``) can use the best epoch by a stable name.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was saved in the same step, so an epoch that
    does not improve the monitored metric would leave ``last.ckpt`` behind and a resume would repeat that epoch.

    When a top-k checkpoint was just saved at the same step with the same state, ``last.ckpt`` is written as a byte
    copy of it rather than from a second snapshot and serialization of the same weights and optimizer state
    (``benchmarks/RESULTS.md``, small-data fit); the two would differ only in the milliseconds of wall time
    ``RunSummary`` counts between saves. They stay two files, so damage to one leaves the other.
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
        # a private hook of ModelCheckpoint (see lit_transfer.core.lightning_private): every save goes through it
        twin = self._twin(trainer, filepath)
        if twin is not None:
            # last.ckpt right after this step's top-k checkpoint, with the same state: a byte copy of that file, not
            # a second snapshot and serialization of weights and optimizer state (the copy releases the GIL)
            if trainer.is_global_zero:
                trainer.strategy.checkpoint_io.copy_checkpoint(twin, filepath)  # type: ignore[attr-defined]
            mark_saved(self, trainer, filepath)
        else:
            super()._save_checkpoint(trainer, filepath)
            self._saved_state = (trainer.global_step, filepath, self.state_dict())
        if filepath == self.best_model_path and self.dirpath is not None and trainer.is_global_zero:
            checkpoint_io = trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, AtomicCheckpointIO) and "://" not in str(filepath):
                checkpoint_io.link_checkpoint(filepath, os.path.join(self.dirpath, BEST_NAME + self.FILE_EXTENSION))

    def _twin(self, trainer: pl.Trainer, filepath: str) -> str | None:
        """The checkpoint saved at this step whose contents ``filepath`` (``last.ckpt``) would repeat, if any.

        Only when this callback's state (the top-k record, ``last_model_path``) is what it was at that save, which
        holds from the second epoch on (the first top-k save precedes the first ``last_model_path``); never for
        remote paths or a checkpoint IO without links.
        """
        saved = getattr(self, "_saved_state", None)
        if saved is None or saved[0] != trainer.global_step or saved[1] == filepath or filepath != self.last_model_path:
            return None
        if "://" in str(filepath) or not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            return None
        return str(saved[1]) if same_state(saved[2], self.state_dict()) else None

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
