"""The classifier's optimization: optimizer config, head/backbone parameter groups, scheduler, balancing check.

The learning-rate schedule itself (warm-up, cosine, a given scheduler) is :mod:`lit_transfer.models.schedules`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning.pytorch.cli import instantiate_class
from torch import nn

from lit_transfer.models.schedules import build_lr_schedule

DEFAULT_OPTIMIZER: dict[str, Any] = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.01}}


def check_learning_rate(optimizer: dict | None) -> None:
    """Refuse a non-positive ``optimizer.init_args.lr`` before anything is built."""
    lr = optimizer.get("init_args", {}).get("lr") if isinstance(optimizer, dict) else None
    if isinstance(lr, int | float) and not lr > 0:
        raise ValueError(f"optimizer.init_args.lr={lr}: the learning rate must be positive, e.g. 0.001")


def check_single_balancing(class_weights: Any, sampler: str | None) -> None:
    """Refuse correcting class imbalance twice: inverse-frequency loss weights on top of class-balanced batches."""
    if class_weights == "auto" and sampler == "balanced":
        raise ValueError(
            "model.init_args.class_weights: auto and data.init_args.sampler: balanced both correct class imbalance: "
            "the balanced sampler already draws every class equally often, so the weights would over-weight rare "
            "classes a second time. Use one of them (or give class_weights as a list to combine them on purpose)"
        )


def parameter_groups(
    head: nn.Module,
    backbone: nn.Module,
    lr: float,
    backbone_lr_factor: float,
    initial_frozen: Iterable[str],
    trains_later: bool,
) -> list[dict[str, Any]]:
    """Head and backbone groups; backbone parameters that ever train (``trains_later``: all) are in from the start."""
    frozen = set(initial_frozen)
    groups = [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    params = [p for n, p in backbone.named_parameters() if n not in frozen or trains_later]
    if params:
        groups.append({"params": params, "lr": lr * backbone_lr_factor, "name": "backbone"})
    return groups


def configure_optimization(
    groups_for: Any, trainer: Any, optimizer: dict | None, lr_scheduler: dict | None, warmup_epochs: float, cosine: bool
) -> Any:
    """The optimizer over ``groups_for(lr)``'s parameter groups, and the scheduler, as ``configure_optimizers`` returns.

    The scheduler is the given one, or warm-up/cosine per optimizer step; with neither, the optimizer alone.
    """
    init = optimizer or DEFAULT_OPTIMIZER
    lr = float(init.get("init_args", {}).get("lr", 1e-3))
    built = instantiate_class(groups_for(lr), init)
    schedule = build_lr_schedule(built, trainer, lr_scheduler, warmup_epochs, cosine)
    return built if schedule is None else {"optimizer": built, "lr_scheduler": schedule}
