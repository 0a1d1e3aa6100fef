"""Every use of a private Lightning API in lit_transfer, each with the behaviour it works around.

Private names can change in any Lightning release; ``pyproject.toml`` bounds ``lightning`` below the next minor
version, and this module is the one place to update when it moves. Besides the functions here, four private hooks
are overridden: ``LightningCLI._add_subcommands`` (one-line help per command, the extra commands listed in
``--help``), ``LightningCLI._parse_ckpt_path`` (``--ckpt_path last|best``, the checkpoint class allow-list, one-line
errors), ``LightningCLI._prepare_subcommand_parser`` (only the parser of the Trainer command a command line names
first is built; the others are placeholders) and ``ModelCheckpoint._save_checkpoint`` (``best.ckpt`` and
``last.ckpt`` kept current); each override names this module.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


def cli_get(cli: Any, config: Any, key: str, default: Any = None) -> Any:
    """``LightningCLI._get``: a key of the running subcommand's config (the CLI has no public accessor)."""
    return cli._get(config, key, default=default)


def subcommand_parsers(parser: Any) -> dict[str, Any]:
    """The parser of each subcommand (``fit``, …) of a jsonargparse parser; empty when it has none."""
    action = getattr(parser, "_subcommands_action", None)
    return dict(getattr(action, "choices", None) or {})


def subcommands_action(parser: Any) -> Any:
    """Jsonargparse's subcommands action, to give each command a one-line help and add the extra commands."""
    return parser._subcommands_action


def option_strings(parser: Any) -> list[str]:
    """Every ``--flag`` a parser accepts (argparse keeps them privately), for did-you-mean suggestions."""
    return [o for o in parser._option_string_actions if o.startswith("--")]


def signal_connector(trainer: pl.Trainer) -> Any:
    """The trainer's SIGTERM bookkeeping, whose flag Lightning's loop reads.

    lit_transfer replaces Lightning's handler, which runs a collective inside the signal handler and can hang every
    rank (Lightning #20806).
    """
    return trainer._signal_connector


def dump_checkpoint(trainer: pl.Trainer) -> dict[str, Any]:
    """The full checkpoint dict, without ``trainer.save_checkpoint``'s barrier.

    After a SIGTERM, ranks stop at different points, and that barrier could wait forever.
    """
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def checkpoint_schedule(callback: ModelCheckpoint) -> tuple[Any, ...]:
    """What ``ModelCheckpoint.state_key`` is made of besides monitor and mode: its saving intervals."""
    return (callback._every_n_train_steps, callback._every_n_epochs, callback._train_time_interval)


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The global step ``ModelCheckpoint`` last saved at (to refresh ``last.ckpt`` once per step)."""
    return int(callback._last_global_step_saved)


def save_last(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Write ``last.ckpt`` now: Lightning refreshes it only when a top-k checkpoint was saved in the same step."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def skips_saving(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``ModelCheckpoint`` saves nothing at this point (``fast_dev_run``, sanity check, same step)."""
    return bool(callback._should_skip_saving_checkpoint(trainer))


def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``ModelCheckpoint`` saves at the training epoch's end (no validation) rather than after validation."""
    return bool(callback._should_save_on_train_epoch_end(trainer))


_EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode"


def quiet_eval_mode_warning(fit_loop: Any) -> None:
    """Silence Lightning's "module(s) in eval mode" warning inside the fit loop's own check, and nowhere else.

    Frozen parts are put in eval mode on purpose (BatchNorm statistics must not move); the loop warns about them
    at the start of training (``_FitLoop._warn_if_modules_in_eval_mode``). Wrapping that one check leaves every other
    warning, and other models' fits, alone.
    """
    check = getattr(fit_loop, "_warn_if_modules_in_eval_mode", None)
    if check is None or getattr(check, "__wrapped__", None) is not None:
        return  # another Lightning version, or already wrapped for an earlier fit with this trainer

    @functools.wraps(check)
    def quiet() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EVAL_MODE_WARNING, category=UserWarning)
            check()

    fit_loop._warn_if_modules_in_eval_mode = quiet


def forget_train_loader(trainer: pl.Trainer) -> None:
    """``fit_loop._combined_loader = None``: the training loader is built again when training starts.

    A schedule sized in ``configure_optimizers`` has the fit loop build the training loader early, before a resumed
    run's progress is restored; that loader's sampler then starts at epoch 0, and with loader workers (which draw
    their first indices when the iterator is made) the first resumed epoch would replay epoch 0's order and
    augmentations. Lightning has no public way to drop a loader it holds.
    """
    trainer.fit_loop._combined_loader = None


def mark_saved(callback: ModelCheckpoint, trainer: pl.Trainer, filepath: str) -> None:
    """What ``ModelCheckpoint._save_checkpoint`` records after a save (its step and file), and the loggers' notice.

    For a save done without ``trainer.save_checkpoint``: ``RunCheckpoint`` links ``last.ckpt`` to the step's top-k
    file instead of writing the same contents twice.
    """
    from weakref import proxy

    callback._last_global_step_saved = trainer.global_step
    callback._last_checkpoint_saved = filepath
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.after_save_checkpoint(proxy(callback))


def epoch_batches_ready(trainer: pl.Trainer) -> bool:
    """``_TrainingEpochLoop._num_ready_batches_reached``: whether the batch just trained ends the training epoch.

    Lightning steps ``interval: epoch`` schedulers at that point in automatic optimization; the fused steps of
    cached features (manual optimization) step them there themselves.
    """
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())


def share_step_count(checkpoint: dict[str, Any]) -> None:
    """Give a checkpoint's automatic and manual optimization step counters the same (larger) value.

    ``trainer.global_step`` reads the automatic-optimization counter or the manual one, whichever the module uses;
    a run saved by one and resumed by the other (``fused_steps`` turned on or off) would otherwise restart its step
    count (and every step-based schedule) from 0.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    auto = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step", {})
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress", {})
    if not auto or not manual:
        return
    for part in ("total", "current"):
        if part in auto and part in manual:
            for field in ("ready", "completed"):
                value = max(int(auto[part].get(field, 0)), int(manual[part].get(field, 0)))
                auto[part][field] = manual[part][field] = value


def share_live_step_count(trainer: pl.Trainer) -> None:
    """:func:`share_step_count` on a running trainer's loop, before a module switches back from manual optimization."""
    loop = trainer.fit_loop.epoch_loop
    automatic = loop.automatic_optimization.optim_progress.optimizer.step
    manual = loop.manual_optimization.optim_step_progress
    fit = {
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": automatic.state_dict()}},
        "epoch_loop.manual_optimization.optim_step_progress": manual.state_dict(),
    }
    share_step_count({"loops": {"fit_loop": fit}})
    automatic.load_state_dict(fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"])
    manual.load_state_dict(fit["epoch_loop.manual_optimization.optim_step_progress"])


def count_optimizer_step(trainer: pl.Trainer) -> None:
    """What ``LightningOptimizer.step`` records in manual optimization: one more step (``trainer.global_step``)."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()
