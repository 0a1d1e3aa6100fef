"""Loading checkpoints and weight files safely: ``torch.load(weights_only=True)``, with one error that says why not.

Every place lit_transfer reads a checkpoint or a weights file (the command line, the checkpoint IO, the export, a
backbone's ``weights`` file) goes through :func:`load_checkpoint`, so pickled code is never run and a file that does
not load is reported the same way everywhere: :class:`CheckpointLoadError` names the file, says what is wrong with it
(a folder, a missing file, not a PyTorch file, an empty, truncated or corrupt one, pickled objects that
``weights_only`` refuses) and how to fix it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lit_transfer.core.errors import ConfigError

__all__ = ["CheckpointLoadError", "CheckpointNotFoundError", "checkpoint_error", "load_checkpoint"]

_ZIP_MAGIC = b"PK"  # torch.save's default format
_PICKLE_MAGIC = b"\x80"  # the legacy format: a bare pickle
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OLDER = "write or copy it again, or use an older checkpoint"
_RESAVE = "re-save only the weights (torch.save(model.state_dict(), path)), or use a checkpoint written by lit_transfer"


class CheckpointLoadError(ConfigError, ValueError):
    """A checkpoint or weights file that cannot be loaded safely; the message names the file and how to fix it.

    A :class:`ConfigError` (the command line reports it in one line, exit status 2) and a ``ValueError`` (what a bad
    argument value raises). ``reason`` is the short account of what is wrong, without the file's name.
    """

    def __init__(self, message: str, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class CheckpointNotFoundError(CheckpointLoadError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""


def load_checkpoint(
    path: str | Path,
    *,
    map_location: Any = "cpu",
    mmap: bool = False,
    require_state_dict: bool = False,
    what: str = "checkpoint",
    hint: str | None = None,
) -> Any:
    """What the local file ``path`` holds, loaded with ``torch.load(weights_only=True)`` (pickled code never runs).

    Args:
        path: a local file (a checkpoint, a state dict, a torchvision weights file).
        map_location: as :func:`torch.load`; the CPU by default.
        mmap: memory-map the tensors instead of reading them (only for torch's default zip format; a legacy-format
            file is read whole).
        require_state_dict: refuse a file that is not a dict with a ``state_dict`` dict (a Lightning checkpoint).
        what: how the message names the file: ``checkpoint``, ``weights file``, ``--ckpt_path``.
        hint: more advice appended to the message (e.g. an option of the command at hand).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointLoadError: ``path`` is a folder, or does not load, or (``require_state_dict``) holds no state dict.
    """
    shown = str(path)
    file = Path(path)
    if file.is_dir():
        raise _error(
            f"{what} {shown!r} is a folder, not a file: give a checkpoint file in it (a run's checkpoints/last.ckpt "
            "or best.ckpt)",
            shown,
            "it is a folder",
            hint,
        )
    if not file.is_file():
        raise _error(f"{what} {shown!r} does not exist", shown, "it does not exist", hint, CheckpointNotFoundError)
    try:
        head = _head(file)
        mmap = mmap and head is not None and head.startswith(_ZIP_MAGIC)
        obj = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        raise checkpoint_error(shown, err, what=what, hint=hint) from err
    if require_state_dict and not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)):
        raise _error(
            f"{what} {shown!r} holds no state_dict: it is not a lit_transfer checkpoint",
            shown,
            "no state_dict in the file",
            hint,
        )
    return obj


def checkpoint_error(
    path: str | Path, err: BaseException, *, what: str = "checkpoint", hint: str | None = None
) -> CheckpointLoadError:
    """The error to raise when loading ``path`` failed with ``err`` (for loaders other than :func:`load_checkpoint`)."""
    shown = str(path)
    if isinstance(err, CheckpointLoadError):
        return err
    if isinstance(err, FileNotFoundError):
        return _error(f"{what} {shown!r} does not exist", shown, "it does not exist", hint, CheckpointNotFoundError)
    reason, fix = _diagnose(shown, err)
    message = f"{what} {shown!r} cannot be loaded safely (torch.load with weights_only=True): {reason}; {fix}"
    return _error(message, shown, reason, hint)


def _error(
    message: str, path: str, reason: str, hint: str | None, kind: type[CheckpointLoadError] = CheckpointLoadError
) -> CheckpointLoadError:
    return kind(f"{message}; {hint}" if hint else message, path, reason)


def _diagnose(path: str, err: BaseException) -> tuple[str, str]:
    """What is wrong with the file (from its first bytes and the error ``torch.load`` raised), and the fix."""
    head = _head(Path(path)) if "://" not in path else None
    text = _ANSI.sub("", str(err))
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        detail = next(
            (line for line in text.splitlines() if "WeightsUnpickler" in line or "GLOBAL" in line), _first(text)
        )
        return (
            "it holds pickled objects other than tensors and plain types, which are refused because loading them "
            f"could run code ({_first(detail)})",
            _RESAVE,
        )
    if head == b"":
        return "the file is empty (an interrupted write or copy?)", _OLDER
    if head is not None and not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return (
            f"it is not a PyTorch checkpoint file: it starts with {head!r}",
            "give a file written by torch.save or lit_transfer (a run's checkpoints/*.ckpt)",
        )
    if isinstance(err, EOFError) or "zip archive" in text or "PytorchStreamReader" in text:
        found = f"{type(err).__name__}: {_first(text)}" if _first(text) else type(err).__name__
        return f"the file is truncated or corrupt ({found})", _OLDER
    found = f"{type(err).__name__}: {_first(text)}" if _first(text) else type(err).__name__
    return found, "is it a checkpoint written by lit_transfer or a file written by torch.save?"


def _first(text: str) -> str:
    """The first sentence of the first line of ``text``: error messages of torch go on for paragraphs."""
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line.split(". ", 1)[0].rstrip(".").strip()


def _head(path: Path) -> bytes | None:
    """The first four bytes of ``path``, ``None`` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return None
