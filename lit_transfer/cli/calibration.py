"""``--calibrate temperature``: after ``fit``, fit a temperature on the best checkpoint's validation logits, store it.

The best checkpoint is validated once more (its weights restored, nothing logged) to collect the validation split's
raw logits from every process; rank 0 fits the temperature (:func:`lit_transfer.models.calibration.calibrate`) and
broadcasts it. It goes into the model (its ``temperature`` buffer, so a ``--test_after_fit`` that follows tests the
calibrated model) and into the best checkpoint, rewritten atomically (``state_dict["temperature"]`` and
``lit_transfer["temperature"]``, with ECE and NLL before and after in ``lit_transfer["calibration"]``;
``best.ckpt`` is pointed at the new file). The figures are printed, logged as ``calibration/*`` scalars and added to
``run_summary.json``.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_transfer.callbacks.calibration import ValidationLogits
from lit_transfer.callbacks.checkpoint_files import BEST_NAME
from lit_transfer.callbacks.checkpoint_io import AtomicCheckpointIO
from lit_transfer.callbacks.run_summary import RunSummary
from lit_transfer.models.calibration import CalibrationResult, calibrate

CalibrationMethod = Literal["temperature"]
CALIBRATE_HELP = (
    "After fit, calibrate the best checkpoint: 'temperature' fits one temperature T on the validation logits "
    "(probabilities become softmax(logits / T)) and writes it into the checkpoint; default: off."
)
TAG = "calibration"  # TensorBoard scalars calibration/temperature, calibration/ece_before, …


def validation_logits(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any, ckpt_path: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split's raw logits ``(N, C)`` and true classes ``(N,)`` with ``ckpt_path``'s weights (all ranks).

    A run of ``trainer.validate`` with its loggers set aside: its metrics would be logged again at the fit's last
    step, and the reports drawn twice.
    """
    collector = ValidationLogits()
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared
    loggers = trainer.loggers
    callbacks.append(collector)
    trainer.loggers = []
    try:
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    finally:
        trainer.loggers = loggers
        callbacks.remove(collector)
    return collector.logits, collector.targets


def write_temperature(ckpt_path: str | os.PathLike[str], result: CalibrationResult) -> None:
    """Rewrite the checkpoint with the fitted temperature, atomically, and point ``best.ckpt`` at it again.

    ``best.ckpt`` is a hard link (or, where links fail, a copy) of the best checkpoint: the new file replaces the old
    under the checkpoint's name, and the alias would keep the old one.
    """
    io = AtomicCheckpointIO()
    path = str(ckpt_path)
    checkpoint = io.load_checkpoint(path)
    state = checkpoint["state_dict"]
    old = state.get("temperature")
    dtype = old.dtype if isinstance(old, torch.Tensor) else torch.float32
    state["temperature"] = torch.tensor(result.temperature, dtype=dtype)
    info = checkpoint.setdefault("lit_transfer", {})
    info["temperature"] = result.temperature
    info["calibration"] = {"method": "temperature", **result.as_dict()}
    alias = Path(path).with_name(BEST_NAME + ModelCheckpoint.FILE_EXTENSION)
    local = "://" not in path
    linked = (
        local
        and alias != Path(path)
        and alias.is_file()
        and (os.path.samefile(alias, path) or filecmp.cmp(alias, path, shallow=False))
    )
    before = os.stat(path) if local else None
    io.save_checkpoint(checkpoint, path)
    if before is not None:
        # the training state is unchanged: keep the file's age, so --ckpt_path last still finds last.ckpt as newest
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    if linked:
        io.link_checkpoint(path, alias)


def _report(trainer: pl.Trainer, result: CalibrationResult, ckpt_path: str) -> None:
    """Print the figures; log them as ``calibration/*`` scalars and add them to ``run_summary.json`` (rank 0)."""
    rank_zero_info(
        f"calibrated on {result.samples} validation images: temperature {result.temperature:.4f}, "
        f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}, NLL {result.nll_before:.4f} -> "
        f"{result.nll_after:.4f}; written into {ckpt_path}"
    )
    if result.separable:
        rank_zero_warn(
            "--calibrate temperature: every validation image is classified right, so the likelihood grows without "
            f"end as T falls and T = {result.temperature:.4g} is only where the fit stopped; probabilities will be "
            "overconfident on harder images (a larger validation split, data.init_args.val_fraction, has mistakes)"
        )
    if not trainer.is_global_zero:
        return
    values = {k: v for k, v in result.as_dict().items() if k not in ("samples", "accuracy")}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for key, value in values.items():
                logger.experiment.add_scalar(f"{TAG}/{key}", value, trainer.global_step)
            logger.experiment.flush()
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning, undeclared
        if isinstance(callback, RunSummary):
            callback.add_to_summary(
                trainer, calibration={"method": "temperature", "checkpoint": ckpt_path, **result.as_dict()}
            )


def calibrate_best_checkpoint(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any
) -> CalibrationResult | None:
    """Fit the temperature of the fit's best checkpoint on the validation split and store it (every rank calls this).

    Returns ``None`` (with a warning) when there is no best checkpoint or no validation image.
    """
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
    if not best:
        rank_zero_warn(
            "--calibrate temperature: the fit saved no best checkpoint (checkpointing off, or fast_dev_run), so there "
            "is nothing to calibrate; skipped"
        )
        return None
    logits, targets = validation_logits(trainer, model, datamodule, best)
    result = calibrate(logits, targets) if trainer.is_global_zero and len(targets) else None
    result = trainer.strategy.broadcast(result, src=0)  # the same temperature on every rank
    if result is None:
        rank_zero_warn("--calibrate temperature: no validation image could be read, so no temperature was fitted")
        return None
    temperature = getattr(model, "temperature", None)
    if isinstance(temperature, torch.Tensor):
        temperature.fill_(result.temperature)
    if trainer.is_global_zero:
        write_temperature(best, result)
    _report(trainer, result, best)
    trainer.strategy.barrier("lit_transfer-calibrated")  # the checkpoint is rewritten before any rank reads it
    return result
