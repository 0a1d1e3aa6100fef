"""What models and callbacks may ask of a data module: a declared interface instead of probing its internals.

:class:`~lit_transfer.data.base.BaseImageDataModule` (and so every lit_transfer data module) satisfies
:class:`DataInfo`; :class:`~lit_transfer.data.rotnet.RotNetDataModule` also satisfies :class:`PredictViewInfo`.
Models and callbacks get the trainer's data module through :func:`data_info`, which returns ``None`` for a trainer
without a data module (plain dataloaders) or with a data module that is not a lit_transfer one: the model then takes
nothing from the data (no dataset normalization, no class weights, no file names in messages).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DataInfo(Protocol):
    """The members of a data module that models and callbacks read.

    Attributes:
        image_size: side of the square crops the model is fed (stored in checkpoints for export).
        manifest_hash: hash of the split assignment once set up, else ``None`` (stored in checkpoints).
        normalization: ``(mean, std)`` of the training split with ``normalize: dataset``, else ``None``.
        sampler: ``random`` or ``balanced`` (class-balanced draws), to refuse balancing twice.
    """

    image_size: int
    manifest_hash: str | None
    normalization: tuple[list[float], list[float]] | None
    sampler: str

    def train_targets(self) -> list[int]:
        """The label of every training example (for inverse-frequency class weights)."""
        ...

    def paths_of(self, split: str, indices: Sequence[int]) -> list[str]:
        """File paths of dataset items of ``split``, for messages that must name files."""
        ...

    def image_of(self, split: str, index: int) -> torch.Tensor | None:
        """Item ``index`` of ``split`` as the evaluation transform shows it (``uint8`` CHW), or ``None``."""
        ...


@runtime_checkable
class PredictViewInfo(Protocol):
    """A data module that describes how it makes the ``predict`` input of a photo (RotNet), for export."""

    def predict_preprocessing(self) -> dict[str, Any]:
        """The predict view's settings, as plain values."""
        ...


_MISSING = object()
_DATA_INFO_MEMBERS: tuple[str, ...] = (
    *DataInfo.__annotations__,
    *(name for name, value in vars(DataInfo).items() if inspect.isfunction(value) and not name.startswith("_")),
)


def provides_data_info(datamodule: object) -> bool:
    """Whether ``datamodule`` has every member of :class:`DataInfo`, checked without evaluating any of them.

    ``isinstance(datamodule, DataInfo)`` would read every member on Python 3.11, computing ``manifest_hash`` (a
    hash over the whole manifest) just to test for it.
    """
    if datamodule is None:
        return False
    return all(inspect.getattr_static(datamodule, name, _MISSING) is not _MISSING for name in _DATA_INFO_MEMBERS)


def data_info(datamodule: object) -> DataInfo | None:
    """``datamodule`` as a :class:`DataInfo` when it is one, else ``None`` (no data module, or a foreign one)."""
    return datamodule if provides_data_info(datamodule) else None  # type: ignore[return-value]


def trainer_data_info(module: Any) -> DataInfo | None:
    """The :class:`DataInfo` of the trainer running LightningModule ``module``, or ``None`` (no trainer or data)."""
    trainer = getattr(module, "_trainer", None)
    return data_info(getattr(trainer, "datamodule", None)) if trainer is not None else None
