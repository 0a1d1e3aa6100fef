"""The ``lit_transfer`` command line: LightningCLI with run folders, default callbacks and data → model links."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim import Optimizer

from lit_transfer.callbacks import PredictionWriter, RunCheckpoint
from lit_transfer.data import BaseImageDataModule
from lit_transfer.models import TransferClassifier

DEFAULT_SEED = 42


class ConfigError(Exception):
    """A configuration that cannot be instantiated; reported without a traceback, before any training."""


class LitTransferCLI(LightningCLI):
    """LightningCLI in subclass mode for models and data modules, with lit_transfer's defaults.

    Runs go to ``<runs_dir>/<experiment>/version_N/`` (TensorBoard events, ``config.yaml``, checkpoints, split
    manifest, predictions); the experiment name defaults to the last config file's name.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            model_class=TransferClassifier,
            datamodule_class=BaseImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=DEFAULT_SEED,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Run-folder options, the default checkpointing, optimizer/scheduler injection and data → model links."""
        parser.add_argument("--experiment", type=str | None, default=None, help="Run name; default: the config's name.")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Folder holding one folder per experiment.")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="After fit, test the best checkpoint on the test split."
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val_acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_optimizer_args((Optimizer,), link_to="model.init_args.optimizer")
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, link_to="model.init_args.lr_scheduler")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def _experiment_name(self) -> str:
        config = self.config.get(str(self.subcommand), self.config)
        if config.get("experiment"):
            return str(config["experiment"])
        files = config.get("config") or []
        return Path(str(files[-1])).stem if files else "default"

    def instantiate_classes(self) -> None:
        """Instantiate data, model and trainer; a failure here is a configuration error, reported cleanly."""
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as err:
            raise ConfigError(str(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with a TensorBoard logger in the run folder unless the config sets a logger."""
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") is None:
            runs_dir = self._get(self.config, "runs_dir", "runs")
            kwargs.setdefault(
                "logger", TensorBoardLogger(save_dir=runs_dir, name=self._experiment_name(), default_hp_metric=False)
            )
        callbacks: list[Any] = [PredictionWriter()]
        if kwargs.get("logger", config.get("logger")) is not False:
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        self.trainer_defaults["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Test the best checkpoint right away when ``--test_after_fit true``."""
        if not self._get(self.config, "test_after_fit", False):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


# Subcommands beyond Trainer's fit/validate/test/predict: name → "module:function" taking the remaining arguments.
EXTRA_COMMANDS: dict[str, str] = {
    "stats": "lit_transfer.data.stats:main",
    "audit-rotnet": "lit_transfer.rotnet_audit:main",
}

# Top-level keys of a full config that a data-only command accepts and ignores.
_NON_DATA_KEYS = (
    "trainer", "model", "optimizer", "lr_scheduler", "checkpoint", "seed_everything",
    "experiment", "runs_dir", "test_after_fit", "ckpt_path",
)  # fmt: skip


def parse_data_module(args: list[str]) -> tuple[BaseImageDataModule, Namespace]:
    """Instantiate only the data module of a full fit config (``--config X.yaml``, ``--data.*`` overrides).

    The other sections are accepted and returned unparsed, so a data-only command (``stats``) never builds a model
    or downloads weights.
    """
    parser = LightningArgumentParser(prog="lit_transfer")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), merged in order.")
    parser.add_lightning_class_args(BaseImageDataModule, "data", subclass_mode=True)
    for key in _NON_DATA_KEYS:
        parser.add_argument(f"--{key}", type=Any, default=None)
    config = parser.parse_args(args)
    try:
        init = parser.instantiate_classes(config)
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as err:
        raise ConfigError(str(err)) from err
    return init.data, config


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m lit_transfer`` and the ``lit-transfer`` script."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            module, _, function = EXTRA_COMMANDS[argv[0]].partition(":")
            getattr(importlib.import_module(module), function)(argv[1:])
            return
        LitTransferCLI(args=args)
    except ConfigError as err:
        print(f"lit_transfer: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
