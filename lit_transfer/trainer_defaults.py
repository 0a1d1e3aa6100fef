"""The Trainer lit_transfer runs: default callbacks, run-folder logger, atomic checkpoint IO and checkpointing.

``LitTransferCLI`` builds its Trainer from these pieces, and :func:`build_trainer` puts them together the same way
for code that trains without the command line (the benchmarks), so both measure and run the same Trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from lit_transfer.callbacks import EmbeddingProjector, PredictionWriter, RunCheckpoint, TensorBoardReports
from lit_transfer.callbacks.checkpoint import AsyncAtomicCheckpointIO
from lit_transfer.callbacks.data_check import UnreadableDataCheck
from lit_transfer.callbacks.ema import WeightEMA
from lit_transfer.callbacks.progress import ThrottledProgressBar
from lit_transfer.callbacks.reproducibility import EpochSeeder
from lit_transfer.callbacks.run_summary import RunSummary
from lit_transfer.callbacks.signals import SigtermHandler

# RunCheckpoint's defaults on the command line (``checkpoint.*``): the best validation accuracy, and last.ckpt
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "monitor": "val_acc",
    "mode": "max",
    "save_last": True,
    "filename": "epoch{epoch:03d}-val_acc{val_acc:.4f}",
    "auto_insert_metric_name": False,
}
# Trainer arguments lit_transfer sets: data modules shard their own loaders (epoch-seeded, no padding at evaluation),
# see EpochSampler
TRAINER_DEFAULTS: dict[str, Any] = {"use_distributed_sampler": False}


def run_logger(runs_dir: str | os.PathLike[str], experiment: str, version: int | None = None) -> TensorBoardLogger:
    """The run-folder logger: TensorBoard events in ``<runs_dir>/<experiment>/version_N/``."""
    return TensorBoardLogger(save_dir=os.fspath(runs_dir), name=experiment, version=version, default_hp_metric=False)


def with_checkpoint_io(plugins: Any) -> list[Any] | None:
    """``plugins`` plus the atomic, asynchronous checkpoint IO, or ``None`` when they already hold a CheckpointIO."""
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins] if plugins else []
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return None
    return [*plugins, AsyncAtomicCheckpointIO()]


def default_callbacks(seed: int | bool | None, logger: bool = True, progress_bar: bool = True) -> list[Callback]:
    """The callbacks every lit_transfer Trainer gets, after the configured ones.

    Prediction writing, SIGTERM handling and the mid-run unreadable-data check always; per-epoch seeding when
    ``seed`` is an integer (not ``None``/``False``); the learning-rate monitor and the run summary when there is a
    ``logger``; the throttled progress bar when the ``progress_bar`` is on.
    """
    callbacks: list[Callback] = [PredictionWriter(), SigtermHandler(), UnreadableDataCheck()]
    if seed is not False and seed is not None:
        callbacks.append(EpochSeeder(int(seed)))
    if logger:
        callbacks += [LearningRateMonitor(logging_interval="epoch"), RunSummary()]
    if progress_bar:
        callbacks.append(ThrottledProgressBar())
    return callbacks


def build_trainer(
    runs_dir: str | os.PathLike[str],
    experiment: str = "default",
    *,
    version: int | None = None,
    seed: int | bool | None = 42,
    callbacks: Sequence[Callback] = (),
    checkpoint: dict[str, Any] | None = None,
    ema: bool | dict[str, Any] = False,
    reports: bool = True,
    projector: bool = True,
    callbacks_after: Sequence[Callback] = (),
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A Trainer as ``python -m lit_transfer fit`` builds it, for code that trains without the command line.

    ``callbacks`` come first (as ``trainer.callbacks`` of a config), then ``RunCheckpoint`` (:data:`CHECKPOINT_DEFAULTS`
    updated with ``checkpoint``), ``WeightEMA`` (enabled when ``ema`` is true or a dict of its options such as
    ``{"decay": 0.99}``), ``TensorBoardReports`` (unless ``reports`` is false), ``EmbeddingProjector``
    (unless ``projector`` is false), the
    :func:`default_callbacks`, and ``callbacks_after`` (Lightning still moves the checkpoint callback to the very
    end). The logger is :func:`run_logger` unless ``trainer_kwargs`` give one; the plugins gain
    :func:`with_checkpoint_io`; ``trainer_kwargs`` override :data:`TRAINER_DEFAULTS` and every other argument.
    """
    kwargs: dict[str, Any] = {**TRAINER_DEFAULTS, **trainer_kwargs}
    if kwargs.get("logger") is None:
        kwargs["logger"] = run_logger(runs_dir, experiment, version)
    plugins = with_checkpoint_io(kwargs.get("plugins"))
    if plugins is not None:
        kwargs["plugins"] = plugins
    chosen: list[Callback] = [*callbacks, RunCheckpoint(**{**CHECKPOINT_DEFAULTS, **(checkpoint or {})})]
    chosen.append(WeightEMA(**({"enabled": True, **ema} if isinstance(ema, dict) else {"enabled": ema})))
    if reports:
        chosen.append(TensorBoardReports())
    if projector:
        chosen.append(EmbeddingProjector())
    chosen += default_callbacks(
        seed, logger=kwargs["logger"] is not False, progress_bar=kwargs.get("enable_progress_bar") is not False
    )
    kwargs["callbacks"] = [*chosen, *callbacks_after]
    return pl.Trainer(**kwargs)
