"""WeightEMA: an exponential moving average of the model's weights, validated, checkpointed and exported in its place.

Built on Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`, whose update step, callback state and
loading of its checkpoints are used as they are; this subclass also reads the parent's ``_average_model`` (the
:class:`torch.optim.swa_utils.AveragedModel`) and ``_kwargs``, and replaces the update rule, the setup, the swaps
around validation and the saving (see :class:`WeightEMA` for why).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lit_transfer.core.errors import ConfigError

EMA_CHECKPOINT_KEY = "current_model_state"  # WeightAveraging's key for the live weights; state_dict holds the EMA
AVERAGING_STATE_KEY = "averaging_state"  # the AveragedModel's own state (n_averaged)
_PREFIX = "module."  # AveragedModel's state-dict prefix of the averaged module


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay of the update that follows ``updates`` earlier ones: ``decay``, or ``min(decay, (1+n)/(10+n))``."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def ema_multi_avg_fn(
    decay: float, warmup: bool = False
) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: ``ema = ema + (1 - d) * (live - ema)`` (a lerp) for floating tensors.

    A lerp leaves a value exactly unchanged when the live one equals it, so frozen parameters and constant buffers
    (normalization mean/std, class weights) stay bitwise equal to the live model's, which ``d * ema + (1 - d) * live``
    does not guarantee. Integer tensors (BatchNorm's ``num_batches_tracked``) are copied: they are counts, not weights.
    ``AveragedModel`` calls it with tensors grouped by device and dtype, and only after its first update, which copies.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        if not averaged:
            return
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        weight = 1.0 - ema_decay(decay, int(num_averaged), warmup)
        torch._foreach_lerp_(averaged, current, weight)

    return update


class WeightEMA(WeightAveraging):
    """Keep an exponential moving average (EMA) of the weights; validate, checkpoint and finish with it.

    After every ``update_every_n_steps``-th optimizer step the average moves towards the live weights:
    ``ema = decay * ema + (1 - decay) * live`` (the first update copies them), over every parameter and buffer, so
    BatchNorm running statistics are averaged too (their ``num_batches_tracked`` is copied); frozen parameters and
    constant buffers stay exactly the live ones. Each validation during ``fit`` runs on the EMA (so ``val_acc``, the
    monitored metric and the best checkpoint are the EMA's), and the live weights are put back for training.
    Checkpoints hold the EMA as their ``state_dict`` (so ``validate``/``test``/``predict --ckpt_path`` and export use
    it with no option), the live weights under ``current_model_state`` and the update count under
    ``averaging_state``; a resumed ``fit`` restores both exactly. When ``fit`` ends the model keeps the EMA weights.
    ``checkpoint.save_weights_only`` is refused: weights-only checkpoints skip callbacks, so they cannot hold the EMA.

    Under DDP every process keeps its own average of the (synchronised) live weights; before each validation the
    averaged buffers are broadcast from rank 0 (BatchNorm statistics differ per process), so every process validates,
    and a resumed run continues, with rank 0's average, the one checkpoints store.

    Args:
        enabled: keep the EMA; ``false`` does nothing (a checkpoint made with the EMA then resumes from its live
            weights).
        decay: weight of the old average at each update, in [0, 1); 0.999 averages over roughly the last 1,000
            updates, so short runs want a lower value (0.99) or ``warmup``.
        update_every_n_steps: update after every this many optimizer steps (each update applies ``decay`` once).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at the update after ``n`` earlier ones, so the early average
            is not dominated by the initial weights (the new head's random ones).
    """

    def __init__(
        self, enabled: bool = False, decay: float = 0.999, update_every_n_steps: int = 1, warmup: bool = False
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay={decay}: use a value in [0, 1), e.g. 0.999 (0.99 for short runs)")
        if update_every_n_steps < 1:
            raise ValueError(f"ema.update_every_n_steps={update_every_n_steps}: use 1 or more")
        super().__init__(use_buffers=True, multi_avg_fn=ema_multi_avg_fn(decay, warmup))
        self.enabled = enabled
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.warmup = warmup
        self._swapped = False  # the EMA weights are in the model (during validation)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every ``update_every_n_steps``-th optimizer step (never at an epoch end)."""
        return step_idx is not None and (step_idx + 1) % self.update_every_n_steps == 0

    # --- the average's life: built at setup, aligned at fit start, dropped at teardown --------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """When fit begins, copy the model as the average (on the device it will train on)."""
        self._swapped = False
        if not self.enabled or stage != TrainerFn.FITTING:
            return
        if any(isinstance(c, ModelCheckpoint) and c.save_weights_only for c in trainer.checkpoint_callbacks):
            raise ConfigError(
                "ema.enabled with checkpoint.save_weights_only true: weights-only checkpoints skip the callbacks, so "
                "they would hold the live weights, not the EMA; set checkpoint.save_weights_only false"
            )
        # WeightAveraging.setup would also call configure_model (channels-last, torch.compile) on the model before
        # Lightning does, and copy a compiled module; the average needs only the tensors
        self._average_model = torch.optim.swa_utils.AveragedModel(
            model=pl_module, device=pl_module.device, use_buffers=True, **self._kwargs
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a fresh average from the model as it trains (after its setup set normalization and class weights)."""
        average = self._average_model
        if average is None:
            return
        average.to(pl_module.device)
        if int(average.n_averaged) == 0:
            with torch.no_grad():
                for avg, live in zip(_tensors(average.module), _tensors(pl_module), strict=True):
                    avg.copy_(live)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Free the average when fit ends (the model holds the EMA weights by then)."""
        if stage == TrainerFn.FITTING:
            self._average_model = None
            self._swapped = False

    # --- updates and the swaps around validation ------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Update the average after the optimizer steps ``should_update`` picks."""
        if self._average_model is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No epoch-end update (``should_update`` never asks for one)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave the EMA weights in the model."""
        if self._average_model is not None:
            if self._swapped:  # the model holds them already
                return
            with torch.no_grad():
                for avg, live in zip(_tensors(self._average_model.module), _tensors(pl_module), strict=True):
                    live.copy_(avg)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate the EMA: swap it into the model (only during fit; evaluations load checkpoints' EMA)."""
        if self._average_model is None or trainer.state.fn != TrainerFn.FITTING or self._swapped:
            return
        if trainer.world_size > 1:
            self._broadcast_buffers(trainer)
        self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the live weights back for training."""
        if self._average_model is not None and self._swapped:
            self._swap(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Put the live weights back when a validation stops (SIGTERM), before ``interrupted.ckpt`` is written."""
        if self._average_model is not None and self._swapped:
            self._swap(pl_module)

    def _swap(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None
        with torch.no_grad():
            for avg, live in zip(_tensors(self._average_model.module), _tensors(pl_module), strict=True):
                kept = live.clone()
                live.copy_(avg)
                avg.copy_(kept)
        self._swapped = not self._swapped

    def _broadcast_buffers(self, trainer: pl.Trainer) -> None:
        # the live parameters agree across processes (DDP), their buffers do not: BatchNorm statistics are
        # updated by each process's own batches, so each process's averaged buffers drift apart
        assert self._average_model is not None
        buffers = list(self._average_model.module.buffers())
        if not buffers:
            return
        received = trainer.strategy.broadcast([b.detach().cpu() for b in buffers], src=0)
        if trainer.global_rank != 0:
            with torch.no_grad():
                for buffer, value in zip(buffers, received, strict=True):
                    buffer.copy_(value)

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The step of the last update (nothing when disabled, so such checkpoints are unchanged)."""
        return super().state_dict() if self._average_model is not None else {}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """``state_dict``: the EMA weights; ``current_model_state``: the live ones; ``averaging_state``: the count."""
        if self._average_model is None:
            return
        state = self._average_model.state_dict()
        held = {name[len(_PREFIX) :]: v for name, v in state.items() if name.startswith(_PREFIX)}
        if self._swapped:  # saved inside a validation: the model holds the EMA, the average the live weights
            checkpoint[EMA_CHECKPOINT_KEY] = held
        else:
            checkpoint[EMA_CHECKPOINT_KEY] = checkpoint["state_dict"]
            checkpoint["state_dict"] = held
        checkpoint[AVERAGING_STATE_KEY] = {name: v for name, v in state.items() if not name.startswith(_PREFIX)}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resuming fit: the live weights from ``current_model_state`` and the average from ``state_dict``.

        Evaluations keep the ``state_dict`` the model was loaded with (the EMA). A fit resumed with the EMA off
        continues from the live weights.
        """
        live = checkpoint.get(EMA_CHECKPOINT_KEY)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if self._average_model is None:
            if live is not None:
                rank_zero_warn(
                    "the checkpoint holds an EMA of the weights (made with ema.enabled true); resuming with the EMA "
                    "off, training continues from its live weights (current_model_state)"
                )
                pl_module.load_state_dict(live)
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(module.parameters(), module.buffers())
