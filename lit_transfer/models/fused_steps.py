"""Fused steps: several training batches of cached features trained in one Lightning step.

A linear head on cached features trains in well under a millisecond per batch, where Lightning's own work around
each step (hooks, progress, closures) costs about as much again. With ``--cache_features.fused_steps K`` the
training loader serves ``K`` batches at a time (:class:`~lit_transfer.core.batches.FeatureSteps`) and the model
trains them one by one in manual optimization, through Lightning's own ``manual_backward`` and optimizer step, so:

- every batch is still one optimizer step: ``trainer.global_step``, ``max_steps`` (checked before each batch),
  gradient clipping and the deferred loss checks count and act per batch;
- ``interval: step`` schedulers step after every batch (with their ``frequency``) and ``interval: epoch`` ones at
  the end of the training epoch, where Lightning steps them;
- configs whose meaning is per Lightning batch are refused by the cache callback before training
  (``limit_train_batches``, ``val_check_interval`` within an epoch, ``accumulate_grad_batches``, EMA, step-based
  checkpoints, ``ReduceLROnPlateau``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from lit_transfer.core.batches import FeatureSteps
from lit_transfer.core.lightning_private import count_optimizer_step, epoch_batches_ready


def fused_training_step(
    module: pl.LightningModule, batch: Any, batch_idx: int, loss_of: Callable[[Any], torch.Tensor | None]
) -> None:
    """Train each batch of ``batch`` (a :class:`FeatureSteps`, or one plain batch) as one optimizer step.

    ``loss_of`` gives a batch's loss, or ``None`` to skip it (no step), as ``training_step`` does in automatic
    optimization.
    """
    trainer = module.trainer
    optimizer = module.optimizers()
    assert not isinstance(optimizer, list), "fused steps train one optimizer"
    batches = batch.batches() if isinstance(batch, FeatureSteps) else [batch]
    steps = getattr(getattr(trainer.train_dataloader, "dataset", None), "steps_per_batch", 1)
    direct = hooks_are_the_modules(trainer, module)
    for j, one in enumerate(batches):
        if 0 <= trainer.max_steps <= trainer.global_step:
            return
        loss = loss_of(one)
        if loss is None:
            continue
        optimizer.zero_grad()
        if direct:  # what manual_backward and optimizer.step() do here, without dispatching no-op hooks
            module.on_before_backward(loss)
            module.backward(loss)
            module.on_after_backward()
        else:
            module.manual_backward(loss)
        if trainer.gradient_clip_val:
            module.clip_gradients(optimizer.optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        if direct:
            module.on_before_optimizer_step(optimizer.optimizer)
            optimizer.optimizer.step()
            count_optimizer_step(trainer)
        else:
            optimizer.step()
        step_schedulers(module, "step", batch_idx * steps + j + 1)


def hooks_are_the_modules(trainer: pl.Trainer, module: pl.LightningModule) -> bool:
    """Whether a backward pass and an optimizer step are the module's own hooks and nothing else.

    True on one device in 32-bit precision when no callback overrides ``on_before_backward``, ``on_after_backward`` or
    ``on_before_optimizer_step``: Lightning's strategy and precision plugin then add nothing to ``loss.backward()``
    and ``optimizer.step()`` but the dispatch of those hooks, which costs a tiny head's step a fifth of its time.
    Under DDP (its backward preparation), mixed precision (the gradient scaler) or with such a callback, the fused
    steps go through ``manual_backward`` and Lightning's optimizer step.
    """
    if trainer.world_size != 1 or type(trainer.strategy) is not SingleDeviceStrategy:
        return False
    if type(trainer.precision_plugin) is not Precision:
        return False
    hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
    return not any(is_overridden(h, c, Callback) for c in trainer.callbacks for h in hooks)  # type: ignore[attr-defined]


def fused_batch_end(module: pl.LightningModule) -> None:
    """Step the ``interval: epoch`` schedulers when the batch just trained ended the training epoch."""
    if epoch_batches_ready(module.trainer):
        step_schedulers(module, "epoch", module.trainer.current_epoch + 1)


def step_schedulers(module: pl.LightningModule, interval: str, index: int) -> None:
    """Step the schedulers of ``interval`` whose ``frequency`` divides ``index`` (1-based), as Lightning does."""
    for config in module.trainer.lr_scheduler_configs:
        if config.interval == interval and index % config.frequency == 0:
            module.lr_scheduler_step(config.scheduler, None)
