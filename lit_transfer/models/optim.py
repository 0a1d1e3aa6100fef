"""The classifier's optimization: optimizer config, head/backbone parameter groups, scheduler, balancing check.

The learning-rate schedule itself (warm-up, cosine, a given scheduler) is :mod:`lit_transfer.models.schedules`;
the per-layer backbone groups of ``layer_decay`` are :mod:`lit_transfer.models.layer_groups`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lightning.pytorch.cli import instantiate_class
from torch import nn

from lit_transfer.models.layer_groups import layer_decay_groups
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
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """The ``head`` group at ``lr``, then the backbone's: one ``backbone`` group, or one per layer with ``layer_decay``.

    The backbone trains at ``lr`` × ``backbone_lr_factor``; with ``layer_decay`` d that is its top layer's lr and
    layer i from the top trains at d**i times it, in group ``backbone.<layer>``
    (:func:`~lit_transfer.models.layer_groups.layer_decay_groups`). Backbone parameters that ever train
    (``trains_later``: all) are in from the start; those frozen for the whole run are in no group.
    """
    frozen = set(initial_frozen)

    def trains(name: str) -> bool:
        return name not in frozen or trains_later

    groups = [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    if layer_decay is not None:
        return groups + layer_decay_groups(backbone, lr * backbone_lr_factor, layer_decay, trains)
    params = [p for n, p in backbone.named_parameters() if trains(n)]
    if params:
        groups.append({"params": params, "lr": lr * backbone_lr_factor, "name": "backbone"})
    return groups


def configure_optimization(
    groups_for: Any,
    trainer: Any,
    optimizer: dict | None,
    lr_scheduler: dict | None,
    warmup_epochs: float,
    cosine: bool,
    restart_epochs: Sequence[int] = (),
) -> Any:
    """The optimizer over ``groups_for(lr)``'s parameter groups, and the scheduler, as ``configure_optimizers`` returns.

    The scheduler is the given one, or warm-up/cosine per optimizer step (restarted at ``restart_epochs``); with
    neither, the optimizer alone.
    """
    init = optimizer or DEFAULT_OPTIMIZER
    lr = float(init.get("init_args", {}).get("lr", 1e-3))
    built = instantiate_class(groups_for(lr), init)
    schedule = build_lr_schedule(built, trainer, lr_scheduler, warmup_epochs, cosine, restart_epochs)
    return built if schedule is None else {"optimizer": built, "lr_scheduler": schedule}
