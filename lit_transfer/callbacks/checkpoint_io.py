"""Checkpoint writing: atomic on local disks, optionally in a background thread, and loads that never run code."""

from __future__ import annotations

import io
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection

from lit_transfer.core.checkpoints import checkpoint_error, load_checkpoint

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

    def copy_checkpoint(self, source: Any, target: Any) -> None:
        """Write ``target`` as a byte copy of the checkpoint ``source`` just written: atomically, fsynced.

        The same contents without a second serialization, in a file of its own (damage done to one, say by a tool
        writing in place, leaves the other). Skipped once a checkpoint write failed, so ``target`` keeps the last
        checkpoint written in full; a failed copy counts as a failed write.
        """
        source, target = Path(source), Path(target)
        if self._skip_after_failure(f"copying {str(source)!r} to {str(target)!r}"):
            return
        tmp = _temp_name(target)
        try:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if self.failed_save is None:
                self.failed_save = str(target)
            raise OSError(f"could not write checkpoint {str(target)!r} (a copy of {str(source)!r}): {err}") from err

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

    def copy_checkpoint(self, source: Any, target: Any) -> None:
        """Copy ``source`` to ``target`` once the saves queued before it are on disk (never if one of them failed)."""
        self._submit(AtomicCheckpointIO.copy_checkpoint, self, source, target)

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
