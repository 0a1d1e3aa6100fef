"""``LitTransferCLI``: LightningCLI with run folders, default callbacks, data → model links and early checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer

from lit_transfer.callbacks import FeatureCache, RunCheckpoint, TensorBoardReports
from lit_transfer.callbacks.ema import WeightEMA
from lit_transfer.callbacks.projector import EmbeddingProjector
from lit_transfer.cli.calibration import CALIBRATE_HELP, CalibrationMethod, calibrate_best_checkpoint
from lit_transfer.cli.checkpoints import (
    CKPT_PATH_HINT,
    check_checkpoint_backbone,
    check_checkpoint_class,
    check_resume_data,
    checkpoint_samples,
    checkpoint_state,
    experiment_checkpoint,
    refuse_finished,
    resumed_version,
)
from lit_transfer.cli.checks import (
    check_experiment_name,
    check_monitor,
    check_shards,
    check_split_not_empty,
    experiment_from_files,
)
from lit_transfer.cli.parsing import command_options, config_file_problem, with_default_optimizer
from lit_transfer.cli.preprocessing import link_preprocessing
from lit_transfer.cli.recipes import RECIPE_HELP, RecipeName, with_recipe
from lit_transfer.commands import COMMANDS
from lit_transfer.config_errors import explain
from lit_transfer.core.checkpoints import checkpoint_error, load_checkpoint
from lit_transfer.core.errors import ConfigError
from lit_transfer.core.launch import launch_rank
from lit_transfer.core.lightning_private import cli_get, subcommands_action
from lit_transfer.core.run_folder import EVALUATION_ENV, EVALUATIONS, VERSION_ENV, reserve_version
from lit_transfer.data import BaseImageDataModule
from lit_transfer.data.checkpoint_classes import classes_from_checkpoint
from lit_transfer.data.images import BadImageError
from lit_transfer.models import TransferClassifier
from lit_transfer.models.optim import check_single_balancing
from lit_transfer.trainer_defaults import (
    CHECKPOINT_DEFAULTS,
    TRAINER_DEFAULTS,
    default_callbacks,
    run_logger,
    with_checkpoint_io,
)

DEFAULT_SEED = 42
TOP_LEVEL_DESCRIPTION = (
    "lit_transfer: transfer learning with PyTorch Lightning. Train, evaluate and predict with an experiment's config "
    "(python -m lit_transfer fit --config configs/<experiment>.yaml); COMMAND --help lists a command's options."
)
TRAINER_COMMANDS = {
    "fit": "Train a model on an experiment's data, validating after each epoch.",
    "validate": "Evaluate a checkpoint on the validation split.",
    "test": "Evaluate a checkpoint on the test split.",
    "predict": "Predict the images of a folder with a checkpoint (predictions.csv).",
}
_EVALUATED = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}


def requested_subcommand(args: Any, subcommands: Any) -> str | None:
    """The Trainer command a command line runs when it names it first (``fit --config X``), else ``None``.

    Only a first argument decides for certain: after a top-level ``--config`` or ``--help``, or for a dict of
    settings, every command's parser is needed.
    """
    if args is not None and not isinstance(args, list | tuple):
        return None
    argv = list(args) if args is not None else sys.argv[1:]
    return str(argv[0]) if argv and argv[0] in subcommands else None


class LitTransferCLI(LightningCLI):
    """LightningCLI in subclass mode for models and data modules, with lit_transfer's defaults.

    Runs go to ``<runs_dir>/<experiment>/version_N/`` (TensorBoard events, ``config.yaml``, checkpoints, split
    manifest, predictions); the experiment name defaults to the last config file's name.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self._requested = requested_subcommand(args, self.subcommands())
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
        parser.add_argument("--recipe", type=RecipeName | None, default=None, help=RECIPE_HELP)
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="After fit, test the best checkpoint on the test split."
        )
        parser.add_argument("--calibrate", type=CalibrationMethod | None, default=None, help=CALIBRATE_HELP)
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FeatureCache, "cache_features")
        parser.add_lightning_class_args(WeightEMA, "ema")  # before reports/projector: at fit's end they see the EMA
        parser.add_lightning_class_args(TensorBoardReports, "reports")  # does nothing without a TensorBoard logger
        parser.add_lightning_class_args(EmbeddingProjector, "projector")  # likewise
        parser.set_defaults({f"checkpoint.{key}": value for key, value in CHECKPOINT_DEFAULTS.items()})
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
        parser.add_optimizer_args((Optimizer,), link_to="model.init_args.optimizer")
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, link_to="model.init_args.lr_scheduler")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser raises on a bad argument instead of printing the usage, so the error can be made short."""
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("description", TOP_LEVEL_DESCRIPTION)
        return super().init_parser(**kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Trainer's fit/validate/test/predict, and the other commands in ``--help`` (``main`` runs those).

        A private hook of LightningCLI (see :mod:`lit_transfer.core.lightning_private`).
        """
        super()._add_subcommands(parser, **kwargs)
        action = subcommands_action(parser)
        for choice in action._choices_actions:  # Trainer's docstrings, cut mid-sentence: one line each
            choice.help = TRAINER_COMMANDS.get(choice.dest, choice.help)
        for name, command in COMMANDS.items():
            placeholder = ArgumentParser(prog=f"lit_transfer {name}", description=command.summary)
            action.add_subcommand(name, placeholder, help=command.summary)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """The parser of ``subcommand``; for a Trainer command the command line does not run, a placeholder.

        Each full parser costs some 30 ms of start-up (the signatures of Trainer, model, data and callbacks), and
        ``fit --config X`` needs only fit's. The placeholder keeps the command in ``--help``, in "invalid choice"
        errors and in the order of the choices. A private hook of LightningCLI (see
        :mod:`lit_transfer.core.lightning_private`).
        """
        if self._requested is not None and subcommand != self._requested:
            return self.init_parser(**kwargs)
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the command line; a bad key or value is one configuration error naming it (and what is valid).

        A ``--recipe`` (or a config file's ``recipe:``) becomes the first config file, under everything the user gives.
        """
        try:
            expanded = with_recipe(args, self.subcommands())
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if args is None and expanded is not None:
            # the command line itself, so Lightning's DDP launcher starts the other processes with the same settings
            sys.argv[1:] = expanded
        else:
            args = expanded
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            problem = config_file_problem(args)
            if problem is not None:
                raise ConfigError(problem) from None
            retry = with_default_optimizer(args, str(err))
            if retry is None:
                raise ConfigError(explain(str(err), command_options(parser, args))) from None
            try:  # --optimizer.lr with no optimizer class anywhere: the documented default, AdamW, is meant
                super().parse_arguments(parser, retry)
            except ArgumentError as again:
                raise ConfigError(explain(str(again), command_options(parser, retry))) from None

    # --- the experiment and its run folder ------------------------------------------------------------------------

    def _experiment_name(self) -> str:
        """``experiment``, else the name of the last config file that defines a model or data (not a preset)."""
        config = self.config.get(str(self.config.get("subcommand")), self.config)
        if config.get("experiment"):
            return str(config["experiment"])
        return experiment_from_files([str(f) for f in config.get("config") or []])

    def _runs(self) -> Path:
        """The experiment's folder of runs: ``<runs_dir>/<experiment>``."""
        config = self.config.get(str(self.config.get("subcommand")), self.config)
        return Path(config.get("runs_dir") or "runs") / self._experiment_name()

    def _run_version(self, resumed: int | None) -> int | None:
        """The run folder's version: the resumed run's, else a new folder reserved atomically by the first process.

        The processes Lightning's DDP launcher starts inherit the number through the environment; under torchrun
        the other ranks leave it to Lightning, which broadcasts rank 0's folder wherever one is needed.
        """
        runs_dir = str(cli_get(self, self.config, "runs_dir", "runs"))
        trainer = cli_get(self, self.config_init, "trainer", default={})
        if resumed is not None or "://" in runs_dir or trainer.get("fast_dev_run"):
            return resumed  # fast_dev_run: Lightning swaps the logger for a dummy, and nothing would fill the folder
        if launch_rank() != 0:
            inherited = os.environ.get(VERSION_ENV, "")
            return int(inherited) if inherited.isdigit() else None
        version = reserve_version(Path(runs_dir) / self._experiment_name())
        os.environ[VERSION_ENV] = str(version)
        return version

    def _evaluation_logger(self, runs_dir: str, fast_dev_run: bool) -> TensorBoardLogger:
        """validate/test/predict log beside the run they evaluate: ``version_N/<command>_K/``.

        A checkpoint from elsewhere is evaluated into ``<runs_dir>/<experiment>/evaluations/<command>_K/``, so
        evaluations never add ``version_N`` folders that look like training runs.
        """
        ckpt = self._ckpt_path(self.config_init)
        run = None
        if ckpt and ckpt not in ("hpc", "registry") and "://" not in str(ckpt):
            resumed = resumed_version(str(ckpt), self._runs())
            run = self._runs() / f"version_{resumed}" if resumed is not None else None
        base = run if run is not None else self._runs() / EVALUATIONS
        prefix = f"{self.subcommand}_"
        if fast_dev_run or "://" in runs_dir:
            name = None  # fast_dev_run: Lightning swaps the logger for a dummy; nothing would fill the folder
        elif launch_rank() != 0:
            name = os.environ.get(EVALUATION_ENV) or None
        else:
            name = f"{prefix}{reserve_version(base, prefix)}"
            os.environ[EVALUATION_ENV] = name
        return TensorBoardLogger(save_dir=str(base.parent), name=base.name, version=name, default_hp_metric=False)

    # --- the checkpoint -------------------------------------------------------------------------------------------

    def _ckpt_path(self, config: Any = None) -> Any:
        subcommand = self.config.get("subcommand")
        return (self.config if config is None else config)[subcommand].get("ckpt_path") if subcommand else None

    def _parse_ckpt_path(self) -> None:
        """Read the checkpoint's hyperparameters (LightningCLI); an unreadable file is a configuration error.

        A private hook of LightningCLI (see :mod:`lit_transfer.core.lightning_private`).
        """
        subcommand = self.config.get("subcommand")
        ckpt = self._ckpt_path()
        if ckpt in ("last", "best"):
            ckpt = self.config[subcommand]["ckpt_path"] = str(experiment_checkpoint(self._runs(), ckpt, subcommand))
        if ckpt:
            model = self.config[subcommand].get("model")
            check_checkpoint_class(ckpt, model.get("class_path") if isinstance(model, Namespace | dict) else None)
            init = model.get("init_args") if isinstance(model, Namespace | dict) else None
            check_checkpoint_backbone(ckpt, init.get("backbone") if isinstance(init, Namespace | dict) else None)
        try:
            super()._parse_ckpt_path()
        except Exception as err:
            raise checkpoint_error(str(self._ckpt_path()), err, what="--ckpt_path", hint=CKPT_PATH_HINT) from err

    def _resolve_ckpt_path(self) -> int | None:
        """Check ``--ckpt_path`` before anything runs.

        Returns the version number of the run folder the checkpoint belongs to when ``fit`` resumes one of this
        experiment's runs, so the resumed run continues in the same folder (TensorBoard curves, checkpoints).
        """
        ckpt = self._ckpt_path(self.config_init) if self.subcommand else None
        if not ckpt or ckpt in ("hpc", "registry") or "://" in str(ckpt):
            return None
        # a folder, a missing file, one that does not load or holds no state dict
        load_checkpoint(str(ckpt), require_state_dict=True, what="--ckpt_path", hint=CKPT_PATH_HINT)
        if self.subcommand != "fit":
            return None
        refuse_finished(str(ckpt), cli_get(self, self.config_init, "trainer", default={}))
        return resumed_version(str(ckpt), self._runs())

    def _predict_checkpoint_classes(self) -> list[str] | None:
        """For ``predict``: the checkpoint's class names, so the training data need not be there.

        ``predict`` without ``--ckpt_path`` is refused: the new head would be untrained, and the predictions random.
        """
        if self.subcommand != "predict":
            return None
        ckpt = self.config["predict"].get("ckpt_path")
        if not ckpt:
            raise ConfigError(
                "predict needs trained weights: pass --ckpt_path with a checkpoint of this experiment (or --ckpt_path "
                "last for its newest); model.init_args.weights loads only a backbone, and the new head would be random"
            )
        state = checkpoint_state(ckpt)
        if state is None:
            return None  # reported by _resolve_ckpt_path
        self._predict_checkpoint = state.get("lit_transfer") or {}
        names = self._predict_checkpoint.get("class_names") or state.get("hyper_parameters", {}).get("class_names")
        return list(names) if names else None

    # --- building ---------------------------------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        """Link the backbone's preprocessing (resize, crop, interpolation) into the data module's config."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        config["experiment"] = self._experiment_name()  # the saved config.yaml keeps the run's experiment
        for warning in link_preprocessing(config):
            rank_zero_warn(warning)

    def instantiate_classes(self) -> None:
        """Instantiate data, model and trainer; a failure here is a configuration error, reported cleanly."""
        check_experiment_name(self._experiment_name())
        try:
            with classes_from_checkpoint(self._predict_checkpoint_classes()):
                super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as err:
            raise ConfigError(explain(str(err))) from err
        except MisconfigurationException as err:  # a bad checkpoint.mode, an accelerator this machine lacks, …
            text = " ".join(str(err).split())
            raise ConfigError(f"checkpoint.mode: {text}" if text.startswith("`mode` can be") else text) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with lit_transfer's defaults: run-folder logger, atomic checkpoints, per-epoch seeding."""
        config = cli_get(self, self.config_init, "trainer", default={})
        version = self._resolve_ckpt_path()
        runs_dir = cli_get(self, self.config, "runs_dir", "runs")
        if config.get("logger") is None and self.subcommand in (None, "fit"):
            version = self._run_version(version)
            kwargs.setdefault("logger", run_logger(runs_dir, self._experiment_name(), version))
        elif config.get("logger") is None:
            kwargs.setdefault("logger", self._evaluation_logger(str(runs_dir), bool(config.get("fast_dev_run"))))
        elif config.get("logger") is False and not config.get("default_root_dir"):
            # without a logger Lightning writes config.yaml and checkpoints into the working directory, where they
            # would overwrite a user's own config.yaml: a fit's go to its run folder as with a logger; an evaluation
            # without a logger writes no file at all (as for its predictions.csv)
            if self.subcommand in (None, "fit"):
                version = self._run_version(version)
                if version is not None:
                    kwargs.setdefault("default_root_dir", str(self._runs() / f"version_{version}"))
            else:
                self.save_config_callback = None
        plugins = with_checkpoint_io(config.get("plugins"))
        if plugins is not None:
            kwargs.setdefault("plugins", plugins)
        cache = cli_get(self, self.config_init, "cache_features")
        if isinstance(cache, FeatureCache) and cache.dir is None:
            cache.dir = str(Path(runs_dir) / "feature_cache")
        self.trainer_defaults["callbacks"] = default_callbacks(
            cli_get(self, self.config, "seed_everything"),
            logger=kwargs.get("logger", config.get("logger")) is not False,
            progress_bar=config.get("enable_progress_bar") is not False,
        )
        return super().instantiate_trainer(**kwargs)

    # --- before and after each command ----------------------------------------------------------------------------

    def _setup_data_early(self, stage: str) -> None:
        """Scan the data before the trainer starts, so a bad folder is a configuration error, not a crash.

        Only the first process does it; under DDP the others receive its scan when the trainer sets them up.
        """
        if launch_rank() != 0:
            return
        try:
            self.datamodule.setup(stage)
        except (ValueError, FileNotFoundError, NotADirectoryError, BadImageError) as err:
            raise ConfigError(str(err)) from err
        ckpt = self._ckpt_path(self.config_init)
        if stage == "fit" and ckpt:
            check_resume_data(self.datamodule, ckpt)
        split = _EVALUATED[stage]
        if stage != "predict":
            saved = checkpoint_samples(self.datamodule, ckpt) if ckpt else None
            check_split_not_empty(self.datamodule, split, saved, ckpt, stage)
        check_shards(self.datamodule, split, self.trainer.world_size)

    def before_fit(self) -> None:
        """Check the data, and the model's settings against it, before training."""
        try:
            check_single_balancing(self.model.hparams.get("class_weights"), getattr(self.datamodule, "sampler", None))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        check_monitor(self.trainer.checkpoint_callback, self.model)
        self._setup_data_early("fit")

    def before_validate(self) -> None:
        """Check the data before validating."""
        self._setup_data_early("validate")

    def before_test(self) -> None:
        """Check the data before testing."""
        self._setup_data_early("test")

    def before_predict(self) -> None:
        """Check the data before predicting; say so when the images are sized otherwise than in training."""
        self._setup_data_early("predict")
        trained = getattr(self, "_predict_checkpoint", {}).get("image_size")
        size = getattr(self.datamodule, "image_size", None)
        if trained and size and trained != size:
            rank_zero_warn(
                f"the checkpoint was trained on {trained} px images and data.init_args.image_size is {size}: "
                f"predicting at {size} px; pass --data.init_args.image_size {trained} to predict as trained"
            )

    def after_fit(self) -> None:
        """Calibrate the best checkpoint (``--calibrate temperature``), then test it (``--test_after_fit true``)."""
        if cli_get(self, self.config, "calibrate", None) == "temperature":
            calibrate_best_checkpoint(self.trainer, self.model, self.datamodule)
        if not cli_get(self, self.config, "test_after_fit", False):
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
