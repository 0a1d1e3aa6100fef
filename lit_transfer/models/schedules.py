"""The learning-rate schedule of a run, sized from the trainer's real optimizer-step counts.

Definitions (per process: under DDP each process's loader is already sharded):

- optimizer steps per epoch = ceil(``trainer.num_training_batches`` / ``accumulate_grad_batches``), so
  ``limit_train_batches`` and accumulation count, and the last, partial accumulation of an epoch is a step;
- total optimizer steps = ``trainer.estimated_stepping_batches`` (``max_steps`` when ``max_epochs`` is -1, else
  the smaller of ``max_steps`` and ``max_epochs`` × steps per epoch);
- warm-up steps W = ``warmup_epochs`` × steps per epoch rounded half up, at least 1 when ``warmup_epochs`` > 0 and
  at most the total steps;
- the lr of optimizer step s (from 0) is base × (s + 1) / (W + 1) for s < W (so even a one-step warm-up is one),
  then base × (1 + cos(π (s - W) / (total - W))) / 2 with ``cosine`` (base at step W, 0 after the last), else base.
  Each parameter group has its own base lr (the backbone's is ``backbone_lr_factor`` × the head's, and with
  ``layer_decay`` each backbone stage's that × ``layer_decay``**depth), so the groups keep their ratios.
- with ``restart_at_unfreeze`` the run is cut into phases at the unfreeze epochs' first steps (epoch × steps per
  epoch) and each phase gets the whole schedule of its own length: its warm-up (W capped at the phase), then cosine
  to 0 at its end, as fastai's ``fine_tune`` runs one cycle frozen and another after unfreezing.

Lightning steps an ``interval: "step"`` scheduler once per optimizer step, not per batch: under accumulation
``update_lr_schedulers("step")`` returns early while ``_should_accumulate()`` (``training_epoch_loop.py``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_schedulers

from lit_transfer.core.lightning_private import forget_train_loader

# Schedulers whose natural unit is the optimizer step (the batch); any other scheduler is stepped once per epoch.
STEP_WISE: tuple[type, ...] = (torch_schedulers.OneCycleLR, torch_schedulers.CyclicLR)
# Absolute learning rates given as one number for all groups; scaled per group (see ``_scale_per_group``).
_PER_GROUP_LR_ARGS: dict[type, tuple[str, ...]] = {
    torch_schedulers.OneCycleLR: ("max_lr",),
    torch_schedulers.CyclicLR: ("base_lr", "max_lr"),
}
# Schedulers that anneal every group towards one ``eta_min`` (a single float in torch).
_ETA_MIN: tuple[type, ...] = (torch_schedulers.CosineAnnealingLR, torch_schedulers.CosineAnnealingWarmRestarts)


@dataclass(frozen=True)
class StepCounts:
    """Optimizer steps of a run as the trainer will take them (``inf`` where the trainer sets no bound)."""

    per_epoch: float
    total: float


def step_counts(trainer: pl.Trainer) -> StepCounts:
    """Optimizer steps per epoch and in all, from the trainer's training loader and limits."""
    built_here = trainer.train_dataloader is None
    if built_here:
        # estimated_stepping_batches loads the loader itself, except when max_epochs is -1 (it returns max_steps)
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else math.inf
    counts = StepCounts(per_epoch=per_epoch, total=trainer.estimated_stepping_batches)
    loader = trainer.train_dataloader
    fused = getattr(loader, "dataset", None)
    if hasattr(fused, "batches_for") and getattr(fused, "steps_per_batch", 1) > 1:
        # fused steps (FusedFeatureDataset): a Lightning batch is several optimizer steps; accumulation is refused
        per_epoch = fused.batches_for(len(loader.sampler))  # type: ignore[union-attr]
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
        total = per_epoch * max(epochs, 1) if per_epoch else 0
        counts = StepCounts(per_epoch, min(total, trainer.max_steps) if trainer.max_steps != -1 else total)
    if built_here and trainer.ckpt_path is not None:
        forget_train_loader(trainer)  # a resumed run's loader must start at the restored epoch: built again later
    return counts


def warmup_steps(warmup_epochs: float, per_epoch: float, total: float) -> int:
    """Warm-up length in optimizer steps: rounded half up, at least 1 when ``warmup_epochs`` > 0, at most ``total``."""
    if warmup_epochs <= 0:
        return 0
    steps = max(1, math.floor(warmup_epochs * per_epoch + 0.5))
    return int(min(steps, total))


def warmup_cosine(warmup: int, total: float, cosine: bool, restarts: Sequence[int] = ()) -> Callable[[int], float]:
    """The lr factor of optimizer step ``step``: linear warm-up to 1, then (with ``cosine``) cosine to 0.

    ``restarts`` (optimizer steps, ascending, inside the run) start the schedule again: each phase between two of
    them is warmed up (at most over the phase) and decayed over its own length.
    """
    starts = [0, *(s for s in restarts if 0 < s < total)]
    ends = [*starts[1:], total]

    def factor(step: int) -> float:
        phase = max(i for i, start in enumerate(starts) if start <= step) if step >= 0 else 0
        local, length = step - starts[phase], ends[phase] - starts[phase]
        ramp = min(warmup, max(1, int(length))) if warmup else 0
        if local < ramp:
            return (local + 1) / (ramp + 1)
        if not cosine:
            return 1.0
        progress = (local - ramp) / max(1.0, length - ramp)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def check_schedule_options(
    lr_scheduler: dict[str, Any] | None,
    warmup_epochs: float,
    cosine: bool,
    restart_at_unfreeze: bool = False,
    milestones: Sequence[int] = (),
) -> None:
    """Refuse schedule options that contradict each other (needs no trainer, so it can run at construction)."""
    if warmup_epochs < 0:
        raise ValueError(f"model.init_args.warmup_epochs={warmup_epochs}: give 0 (no warm-up) or more epochs")
    if restart_at_unfreeze and not milestones:
        raise ValueError(
            "model.init_args.restart_at_unfreeze: true restarts the schedule at the unfreeze epochs, but none is set; "
            "give model.init_args.unfreeze_at_epoch (e.g. 1) or unfreeze_milestones, or set restart_at_unfreeze: false"
        )
    if restart_at_unfreeze and (lr_scheduler or not (warmup_epochs > 0 or cosine)):
        raise ValueError(
            "model.init_args.restart_at_unfreeze: true restarts the built-in warm-up/cosine schedule; set "
            "model.init_args.warmup_epochs and/or cosine: true (without --lr_scheduler), or restart_at_unfreeze: false"
        )
    if lr_scheduler and (warmup_epochs > 0 or cosine):
        given = " and ".join(
            ([f"warmup_epochs={warmup_epochs}"] if warmup_epochs > 0 else []) + (["cosine=true"] if cosine else [])
        )
        raise ValueError(
            f"--lr_scheduler {_class_name(lr_scheduler)} and model.init_args.{given} both set the learning-rate "
            "schedule, and they are not combined; drop --lr_scheduler to use the built-in warm-up/cosine "
            "(stepped per optimizer step), or set model.init_args.warmup_epochs: 0 and "
            "model.init_args.cosine: false to use the scheduler alone (OneCycleLR has its own warm-up, pct_start)"
        )


def build_lr_schedule(
    optimizer: Optimizer,
    trainer: pl.Trainer | None,
    lr_scheduler: dict[str, Any] | None,
    warmup_epochs: float,
    cosine: bool,
    restart_epochs: Sequence[int] = (),
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` config for the optimizer, or ``None`` when the lr stays constant.

    ``restart_epochs`` (``restart_at_unfreeze``: the unfreeze epochs) restart the built-in schedule there.

    ``lr_scheduler`` (class_path/init_args, from ``--lr_scheduler``) and the built-in ``warmup_epochs``/``cosine``
    are not combined: the given schedulers count epochs (or their own steps) while the warm-up counts optimizer
    steps, and ``ReduceLROnPlateau`` cannot be chained at all, so giving both raises a ``ValueError`` saying which
    to drop rather than silently ignoring one.

    The trainer is only needed (and only touched) where the schedule depends on the run's length.
    """
    check_schedule_options(lr_scheduler, warmup_epochs, cosine)
    if lr_scheduler:
        return _given_schedule(optimizer, trainer, lr_scheduler)
    if not warmup_epochs and not cosine:
        return None
    if trainer is None:
        raise ValueError("model.init_args.warmup_epochs/cosine are sized from the trainer: fit the model with one")
    counts = step_counts(trainer)
    if cosine and not math.isfinite(counts.total):
        raise ValueError(
            "model.init_args.cosine: true needs a bounded run to decay over; set trainer.max_epochs or "
            "trainer.max_steps"
        )
    if warmup_epochs > 0 and not math.isfinite(counts.per_epoch):
        raise ValueError(
            f"model.init_args.warmup_epochs={warmup_epochs} needs the number of batches per epoch, but the training "
            "loader has no length; use a sized dataset or trainer.limit_train_batches N"
        )
    if restart_epochs and not math.isfinite(counts.per_epoch):
        raise ValueError(
            "model.init_args.restart_at_unfreeze needs the number of batches per epoch, but the training loader has "
            "no length; use a sized dataset or trainer.limit_train_batches N"
        )
    warmup = warmup_steps(warmup_epochs, counts.per_epoch, counts.total)
    restarts = [int(epoch * counts.per_epoch) for epoch in sorted(restart_epochs)]
    _log_builtin(warmup_epochs, warmup, counts, cosine)
    if restarts:
        rank_zero_info(f"lr schedule: restarted at optimizer steps {restarts} (the unfreeze epochs' first steps)")
    scheduler = torch_schedulers.LambdaLR(optimizer, warmup_cosine(warmup, counts.total, cosine, restarts))
    return {"scheduler": scheduler, "interval": "step"}


def _log_builtin(warmup_epochs: float, warmup: int, counts: StepCounts, cosine: bool) -> None:
    parts = []
    if warmup_epochs > 0:
        exact = warmup_epochs * counts.per_epoch
        note = "s" if warmup != 1 else ""
        if warmup != math.floor(exact + 0.5):
            note += " (raised to 1)" if warmup == 1 else " (capped at the run's total)"
        parts.append(
            f"{warmup} linear warm-up step{note} (warmup_epochs {warmup_epochs:g} × {counts.per_epoch:g} optimizer "
            "steps per epoch)"
        )
    if cosine:
        parts.append(f"cosine decay to 0 over {counts.total - warmup:g} steps")
    rank_zero_info(f"lr schedule: {', then '.join(parts)}; {counts.total:g} optimizer steps in all, stepped per step")


def _class_name(config: dict[str, Any]) -> str:
    return str(config.get("class_path", "?")).rsplit(".", 1)[-1]


def _scheduler_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module) if module else torch_schedulers, name)


def _group_names(optimizer: Optimizer) -> list[str]:
    return [str(g.get("name", f"group {i}")) for i, g in enumerate(optimizer.param_groups)]


def _given_schedule(optimizer: Optimizer, trainer: pl.Trainer | None, config: dict[str, Any]) -> dict[str, Any]:
    """Instantiate ``--lr_scheduler`` with per-group checks, a run-sized OneCycleLR and the right interval."""
    cls = _scheduler_class(str(config["class_path"]))
    args = dict(config.get("init_args") or {})
    name = cls.__name__
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    if issubclass(cls, _ETA_MIN):
        eta_min = float(args.get("eta_min", 0.0))
        for group, lr in zip(_group_names(optimizer), lrs, strict=True):
            if eta_min > lr:
                raise ValueError(
                    f"--lr_scheduler {name} eta_min={eta_min:g} is above the {group} group's base lr {lr:g} "
                    f"(the optimizer's lr × model.init_args.backbone_lr_factor for the backbone, × layer_decay per "
                    f"stage below the top with model.init_args.layer_decay), so its lr would rise to eta_min instead "
                    f"of decaying; set --lr_scheduler.eta_min {lr:g} or lower (e.g. 0), or raise "
                    "model.init_args.backbone_lr_factor (or layer_decay)"
                )
    for key in _PER_GROUP_LR_ARGS.get(cls, ()):
        args = _scale_per_group(args, key, lrs, name)
    if issubclass(cls, torch_schedulers.OneCycleLR):
        args = _size_one_cycle(args, trainer)
    scheduler = cls(optimizer, **args)
    if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
        return {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}
    return {"scheduler": scheduler, "interval": "step" if isinstance(scheduler, STEP_WISE) else "epoch"}


def _scale_per_group(args: dict[str, Any], key: str, lrs: list[float], name: str) -> dict[str, Any]:
    """One absolute ``key`` lr for all groups becomes the first (head) group's, scaled by each group's lr ratio.

    OneCycleLR and CyclicLR overwrite every group's lr with these values, so a single number would otherwise lift
    the backbone group (at ``backbone_lr_factor`` × the head's lr) to the head's peak.
    """
    value = args.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lrs or lrs[0] <= 0:
        return args
    ratios = [lr / lrs[0] for lr in lrs]
    if all(r == 1 for r in ratios):
        return args
    scaled = [float(value) * r for r in ratios]
    shown = ", ".join(f"{v:g}" for v in scaled)
    rank_zero_info(f"lr schedule: {name} {key}={value:g} is the first group's; per group {key} {shown}")
    return {**args, key: scaled}


def _size_one_cycle(args: dict[str, Any], trainer: pl.Trainer | None) -> dict[str, Any]:
    """OneCycleLR without ``total_steps``/``epochs`` spans the run; one shorter than the run is refused up front."""
    total = step_counts(trainer).total if trainer is not None else None
    if args.get("total_steps") is None and args.get("epochs") is None:
        if total is None or not math.isfinite(total):
            raise ValueError(
                "--lr_scheduler OneCycleLR needs the run's length: set trainer.max_epochs or trainer.max_steps, or "
                "--lr_scheduler.total_steps"
            )
        rank_zero_info(f"lr schedule: OneCycleLR over the run's {total:g} optimizer steps (total_steps)")
        return {**args, "total_steps": int(total)}
    if args.get("total_steps") is not None:
        steps = int(args["total_steps"])
    else:
        steps = int(args["epochs"]) * int(args.get("steps_per_epoch") or 0)
    if total is not None and math.isfinite(total) and steps < total:
        raise ValueError(
            f"--lr_scheduler OneCycleLR spans {steps} steps (total_steps, or epochs × steps_per_epoch) but the run "
            f"takes {total:g} optimizer steps, and OneCycleLR fails past its end; leave total_steps and epochs unset "
            "to span the run"
        )
    return args
