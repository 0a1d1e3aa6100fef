"""Predicting from a checkpoint: the classes come from the checkpoint, so no training folder needs to exist.

The command line sets them (:func:`classes_from_checkpoint`) while it builds the data module for ``predict
--ckpt_path``; data modules then take these names instead of scanning their training folders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

_CLASSES: ContextVar[list[str] | None] = ContextVar("lit_transfer_checkpoint_classes", default=None)


@contextmanager
def classes_from_checkpoint(names: Sequence[str] | None) -> Iterator[None]:
    """While active, data modules built take ``names`` as their classes and leave their training folders alone."""
    token = _CLASSES.set(list(names) if names else None)
    try:
        yield
    finally:
        _CLASSES.reset(token)


def checkpoint_classes() -> list[str] | None:
    """The class names of the checkpoint being predicted with, or ``None`` outside ``predict --ckpt_path``."""
    names = _CLASSES.get()
    return list(names) if names is not None else None
