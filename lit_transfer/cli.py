"""The ``lit_transfer`` command line: LightningCLI with run folders, default callbacks and data → model links."""

from __future__ import annotations

import difflib
import functools
import itertools
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch.optim import Optimizer

from lit_transfer.callbacks import FeatureCache, RunCheckpoint, TensorBoardReports
from lit_transfer.callbacks.checkpoint import newest_valid_checkpoint
from lit_transfer.callbacks.signals import sigterm_received
from lit_transfer.commands import COMMANDS
from lit_transfer.commands import run as run_command
from lit_transfer.config_errors import explain
from lit_transfer.core.checkpoints import CheckpointLoadError, checkpoint_error, load_checkpoint
from lit_transfer.core.errors import CheckpointMismatchError, ConfigError
from lit_transfer.core.run_folder import VERSION_ENV, keep_reserved, release_unused, reserve_version
from lit_transfer.data import BaseImageDataModule
from lit_transfer.data.checkpoint_classes import classes_from_checkpoint
from lit_transfer.data.images import BadImageError
from lit_transfer.export import MODEL_CLASSES, refuse_unknown_class
from lit_transfer.models import RotNetClassifier, TransferClassifier
from lit_transfer.models.classifier import DEFAULT_OPTIMIZER, check_single_balancing
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
        parser.add_lightning_class_args(FeatureCache, "cache_features")
        parser.add_lightning_class_args(TensorBoardReports, "reports")  # does nothing without a TensorBoard logger
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
        """Trainer's fit/validate/test/predict, and the other commands in ``--help`` (``main`` runs those)."""
        super()._add_subcommands(parser, **kwargs)
        for choice in parser._subcommands_action._choices_actions:  # Trainer's docstrings, cut mid-sentence: one line
            choice.help = TRAINER_COMMANDS.get(choice.dest, choice.help)
        for name, command in COMMANDS.items():
            placeholder = ArgumentParser(prog=f"lit_transfer {name}", description=command.summary)
            parser._subcommands_action.add_subcommand(name, placeholder, help=command.summary)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the command line; a bad key or value is one configuration error naming it (and what is valid)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            problem = _config_file_problem(args)
            if problem is not None:
                raise ConfigError(problem) from None
            retry = _with_default_optimizer(args, str(err))
            if retry is None:
                raise ConfigError(explain(str(err), _option_strings(parser, args))) from None
            try:  # --optimizer.lr with no optimizer class anywhere: the documented default, AdamW, is meant
                super().parse_arguments(parser, retry)
            except ArgumentError as again:
                raise ConfigError(explain(str(again), _option_strings(parser, retry))) from None

    def _runs(self) -> Path:
        """The experiment's folder of runs: ``<runs_dir>/<experiment>``."""
        config = self.config.get(str(self.config.get("subcommand")), self.config)
        return Path(config.get("runs_dir") or "runs") / self._experiment_name()

    def _experiment_checkpoint(self, which: str, subcommand: str) -> Path:
        """The file ``--ckpt_path last`` or ``best`` stands for.

        ``last`` is the newest readable epoch-end checkpoint of the experiment, ``best`` its newest run's ``best.ckpt``;
        resolved before anything is built, so the checkpoint's hyperparameters apply as for a file.
        """
        runs = self._runs()
        if which == "last":
            found = newest_valid_checkpoint(sorted(runs.glob("version_*/checkpoints")))
            if found is None:
                raise ConfigError(
                    f"--ckpt_path last: no readable checkpoint in {runs}/version_*/checkpoints/; run without "
                    "--ckpt_path to start training, or give a checkpoint file"
                )
            rank_zero_info(f"{'resuming from' if subcommand == 'fit' else 'using'} {found}")
            return found
        if subcommand == "fit":
            raise ConfigError("--ckpt_path best cannot resume training: use --ckpt_path last, or a checkpoint file")
        runs_with_best = [p for p in runs.glob("version_*/checkpoints/best.ckpt") if p.parts[-3][8:].isdigit()]
        if not runs_with_best:
            raise ConfigError(
                f"--ckpt_path best: no best.ckpt in {runs}/version_*/checkpoints/; train first, or give a checkpoint"
            )
        found = max(runs_with_best, key=lambda p: int(p.parts[-3][8:]))
        rank_zero_info(f"using {found}")
        return found

    def _parse_ckpt_path(self) -> None:
        """Read the checkpoint's hyperparameters (LightningCLI); an unreadable file is a configuration error."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt in ("last", "best"):
            self.config[subcommand]["ckpt_path"] = str(self._experiment_checkpoint(ckpt, subcommand))
        self._check_checkpoint_class()
        try:
            super()._parse_ckpt_path()
        except Exception as err:
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            raise checkpoint_error(str(ckpt), err, what="--ckpt_path", hint=_CKPT_PATH_HINT) from err

    def _check_checkpoint_class(self) -> None:
        """Refuse a checkpoint whose ``_class_path`` is not a lit_transfer model or the class the config names.

        LightningCLI would import whatever module the checkpoint names (running a ``.py`` file shipped beside it);
        the class is checked by name, before anything is imported.
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        state = checkpoint_state(ckpt) if ckpt else None  # an unreadable one is reported by _parse_ckpt_path
        hparams = state.get("hyper_parameters") if state is not None else None
        class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
        if not class_path:
            return
        model = self.config[subcommand].get("model")
        configured = model.get("class_path") if isinstance(model, Namespace | dict) else None
        if class_path in MODEL_CLASSES or class_path == configured:
            return
        raise ConfigError(f"--ckpt_path {ckpt!r}: {refuse_unknown_class(str(class_path))}")

    def _experiment_name(self) -> str:
        config = self.config.get(str(self.config.get("subcommand")), self.config)
        if config.get("experiment"):
            return str(config["experiment"])
        files = config.get("config") or []
        return Path(str(files[-1])).stem if files else "default"

    def instantiate_classes(self) -> None:
        """Instantiate data, model and trainer; a failure here is a configuration error, reported cleanly."""
        name = self._experiment_name()
        if len(name.encode()) > 255 - len(".tmp"):  # one path component; the run folder is named after it
            raise ConfigError(
                f"--experiment {name[:40]!r}… is {len(name.encode())} bytes: too long for a folder name; use at "
                "most 250"
            )
        try:
            with classes_from_checkpoint(self._predict_checkpoint_classes()):
                super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as err:
            raise ConfigError(explain(str(err))) from err
        except MisconfigurationException as err:  # a bad checkpoint.mode, an accelerator this machine lacks, …
            text = " ".join(str(err).split())
            raise ConfigError(f"checkpoint.mode: {text}" if text.startswith("`mode` can be") else text) from err

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

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with lit_transfer's defaults: run-folder logger, atomic checkpoints, per-epoch seeding."""
        config = self._get(self.config_init, "trainer", default={})
        version = self._resolve_ckpt_path()
        if config.get("logger") is None:
            version = self._run_version(version)
            kwargs.setdefault(
                "logger", run_logger(self._get(self.config, "runs_dir", "runs"), self._experiment_name(), version)
            )
        plugins = with_checkpoint_io(config.get("plugins"))
        if plugins is not None:
            kwargs.setdefault("plugins", plugins)
        cache = self._get(self.config_init, "cache_features")
        if isinstance(cache, FeatureCache) and cache.dir is None:
            cache.dir = str(Path(self._get(self.config, "runs_dir", "runs")) / "feature_cache")
        self.trainer_defaults["callbacks"] = default_callbacks(
            self._get(self.config, "seed_everything"),
            logger=kwargs.get("logger", config.get("logger")) is not False,
            progress_bar=config.get("enable_progress_bar") is not False,
        )
        return super().instantiate_trainer(**kwargs)

    def _run_version(self, resumed: int | None) -> int | None:
        """The run folder's version: the resumed run's, else a new folder reserved atomically by the first process.

        The processes Lightning's DDP launcher starts inherit the number through the environment; under torchrun
        the other ranks leave it to Lightning, which broadcasts rank 0's folder wherever one is needed.
        """
        runs_dir = str(self._get(self.config, "runs_dir", "runs"))
        trainer = self._get(self.config_init, "trainer", default={})
        if resumed is not None or "://" in runs_dir or trainer.get("fast_dev_run"):
            return resumed  # fast_dev_run: Lightning swaps the logger for a dummy, and nothing would fill the folder
        if launch_rank() != 0:
            inherited = os.environ.get(VERSION_ENV, "")
            return int(inherited) if inherited.isdigit() else None
        version = reserve_version(Path(runs_dir) / self._experiment_name())
        os.environ[VERSION_ENV] = str(version)
        return version

    def _resolve_ckpt_path(self) -> int | None:
        """Check ``--ckpt_path`` before anything runs; ``last`` means the newest readable epoch-end checkpoint.

        Returns the version number of the run folder the checkpoint belongs to when ``fit`` resumes one of this
        experiment's runs, so the resumed run continues in the same folder (TensorBoard curves, checkpoints).
        """
        if self.subcommand is None:
            return None
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if not ckpt or ckpt in ("hpc", "registry"):
            return None
        runs = self._runs()
        if "://" not in str(ckpt):  # a folder, a missing file, one that does not load or holds no state dict
            load_checkpoint(str(ckpt), require_state_dict=True, what="--ckpt_path", hint=_CKPT_PATH_HINT)
        if self.subcommand == "fit" and "://" not in str(ckpt):
            _refuse_finished(str(ckpt), self._get(self.config_init, "trainer", default={}))
        folder = Path(ckpt).resolve().parent
        if self.subcommand == "fit" and folder.name == "checkpoints" and folder.parent.parent == runs.resolve():
            name = folder.parent.name
            if name.startswith("version_") and name[len("version_") :].isdigit():
                return int(name[len("version_") :])
        return None

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
        if stage == "fit":
            self._check_resume_data()
        world = self.trainer.world_size
        splits = {"fit": ("val",), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[stage]
        if stage != "predict":
            self._check_split_not_empty(splits[0])
        for split in splits if world > 1 else ():
            size = len(getattr(self.datamodule, "_datasets", {}).get(split) or [])
            if 0 < size < world:
                # evaluation shards are not padded (no image counted twice), so some processes would get none
                raise ConfigError(
                    f"the {split} split has {size} image(s) for {world} processes: each process needs at least one. "
                    "Use fewer devices for this data, or more images in the split"
                )

    def _check_split_not_empty(self, split: str) -> None:
        """Refuse an empty val or test split before anything runs; with a checkpoint, its split (which wins) counts.

        Training without validation is not offered: the default checkpointing monitors ``val_acc``.
        """
        ckpt = self.config_init[self.subcommand].get("ckpt_path") if self.subcommand else None
        saved = self._checkpoint_samples(ckpt) if ckpt else None
        if saved is not None and not any(s.split == split for s in saved):
            raise ConfigError(
                f"--ckpt_path {ckpt!r} was trained with no {split} images, and its split replaces the one "
                f"data.init_args.{split}_fraction asks for now (so no image it trained on is evaluated): the split "
                f"changed. Train a new run with data.init_args.{split}_fraction > 0 to {self.subcommand} on it"
            )
        if saved is None and not len(getattr(self.datamodule, "_datasets", {}).get(split) or []):
            raise ConfigError(
                f"the {split} split is empty (data.init_args.{split}_fraction 0 and no {split} folder): give "
                f"data.init_args.{split}_fraction > 0 (e.g. 0.2), or a {split} folder with data.init_args.{split}_dir"
            )

    def _check_resume_data(self) -> None:
        """Refuse a resume whose data changed before the trainer starts, so no run file is rewritten.

        Checked again when the trainer restores the checkpoint; here it runs before ``config.yaml`` and
        ``split_manifest.csv`` of the resumed run are written.
        """
        ckpt = self.config_init["fit"].get("ckpt_path")
        state = checkpoint_state(ckpt) if ckpt else None
        entry = state.get(type(self.datamodule).__qualname__) if state is not None else None
        check = getattr(self.datamodule, "resumed_samples", None)
        if not isinstance(entry, dict) or "manifest" not in entry or check is None:
            return
        try:
            check(entry, warn=False)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"--ckpt_path {ckpt!r}: {err}") from err

    def _checkpoint_samples(self, ckpt: str) -> list[Any] | None:
        """The split manifest a checkpoint stores for this data module, or ``None`` when it has none."""
        state = checkpoint_state(ckpt)  # an unreadable checkpoint is reported where it is loaded
        if state is None or not hasattr(self.datamodule, "_saved_samples"):
            return None
        entry = state.get(type(self.datamodule).__qualname__)
        try:
            return self.datamodule._saved_samples(entry) if isinstance(entry, dict) and "manifest" in entry else None
        except (KeyError, TypeError, ValueError):
            return None

    def before_fit(self) -> None:
        """Check the data, and the model's settings against it, before training."""
        try:
            check_single_balancing(self.model.hparams.get("class_weights"), getattr(self.datamodule, "sampler", None))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self._check_monitor()
        self._setup_data_early("fit")

    def _check_monitor(self) -> None:
        """``checkpoint.monitor`` must be a metric the model logs, or checkpointing fails after a whole epoch."""
        callback = self.trainer.checkpoint_callback
        monitor = getattr(callback, "monitor", None)
        collections = getattr(self.model, "metrics", None)
        if not monitor or not isinstance(collections, torch.nn.ModuleDict):
            return
        logged = set()
        for stage in ("train", "val", "test"):
            logged.add(f"{stage}_loss")
            if f"{stage}_metrics" in collections:
                logged |= set(collections[f"{stage}_metrics"].keys(keep_base=False))
            if isinstance(self.model, RotNetClassifier):  # added in its setup()
                logged |= {f"{stage}_angle_error", f"{stage}_angle_error_median", f"{stage}_parity_acc"}
        if monitor in logged or monitor.startswith("lr-"):  # lr-*: LearningRateMonitor
            return
        close = difflib.get_close_matches(monitor, sorted(logged), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"checkpoint.monitor {monitor!r} is not a metric {type(self.model).__name__} logs{hint} It logs: "
            f"{', '.join(sorted(n for n in logged if not n.startswith('test_')))}"
        )

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
        """Test the best checkpoint right away when ``--test_after_fit true``."""
        if not self._get(self.config, "test_after_fit", False):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


# Subcommands beyond Trainer's fit/validate/test/predict (lit_transfer.commands.COMMANDS): name → "module:function".
EXTRA_COMMANDS: dict[str, str] = {name: command.target for name, command in COMMANDS.items()}


def _config_hint(argv: list[str], err: Exception) -> str:
    """For fit/validate/test/predict missing what a config gives, and given no ``--config``: where configs are."""
    if not argv or argv[0] not in LitTransferCLI.subcommands() or "are required" not in str(err):
        return ""
    if any(a in ("--config", "-c") or a.startswith(("--config=", "-c=")) for a in argv):
        return ""
    return f"; give the experiment's config: python -m lit_transfer {argv[0]} --config configs/<experiment>.yaml"


_CKPT_PATH_HINT = "--ckpt_path last takes the newest readable checkpoint of this experiment"


def checkpoint_state(ckpt: str) -> dict[str, Any] | None:
    """A local checkpoint's contents, memory-mapped and read once however many startup checks look at it.

    ``None`` for a remote path, a missing file or one that does not load with ``weights_only=True``.
    """
    if "://" in str(ckpt) or not Path(ckpt).is_file():
        return None
    stat = Path(ckpt).stat()
    return _load_state(str(Path(ckpt).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_state(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    # keyed by modification time and size too: a file rewritten since (a resumed run's last.ckpt) is read again
    try:
        state = load_checkpoint(path, mmap=True)
    except CheckpointLoadError:
        return None
    return state if isinstance(state, dict) else None


def _refuse_finished(ckpt: str, trainer: Any) -> None:
    """Resuming a run that already reached ``max_epochs``/``max_steps`` would train nothing and say nothing."""
    state = checkpoint_state(ckpt) or {}
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs_done, steps_done = progress.get("processed", state.get("epoch", 0)), state.get("global_step", 0)
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs:  # Lightning stops at either limit
        raise ConfigError(
            f"--ckpt_path {ckpt!r} has already trained {epochs_done} epochs, and --trainer.max_epochs is {max_epochs}: "
            "nothing is left to train. Raise --trainer.max_epochs to continue, or use validate/test/predict with it"
        )
    if max_steps is not None and max_steps > 0 and steps_done >= max_steps:
        raise ConfigError(
            f"--ckpt_path {ckpt!r} has already trained {steps_done} steps, and --trainer.max_steps is {max_steps}: "
            "nothing is left to train. Raise --trainer.max_steps to continue"
        )


def _config_file_problem(args: Any) -> str | None:
    """An empty or non-mapping ``--config`` file among ``args``, named, or ``None``."""
    if args is not None and not isinstance(args, list | tuple):
        return None  # a dict or Namespace of settings: no files
    argv = list(args) if args is not None else sys.argv[1:]
    files = [b for a, b in itertools.pairwise(argv) if a in ("--config", "-c")]
    files += [a.partition("=")[2] for a in argv if a.startswith("--config=")]
    for name in files:
        try:
            loaded = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # jsonargparse's own message names these
        if loaded is None:
            return f"--config {name!r} is empty: put settings in it (see configs/ for examples) or leave it out"
        if not isinstance(loaded, dict):
            return f"--config {name!r} holds a {type(loaded).__name__}, not a mapping of settings (key: value lines)"
    return None


def _with_default_optimizer(args: Any, message: str) -> list[str] | None:
    """``args`` with ``--optimizer AdamW`` inserted, when an ``--optimizer.*`` option failed for want of a class.

    Without a class anywhere, jsonargparse matches ``--optimizer.lr`` against ``torch.optim.Optimizer`` and fails.
    Declaring AdamW as the parser's default instead would carry its ``weight_decay`` over to any other optimizer a
    config names; inserting the class name affects only the command lines that fail without it.
    """
    if args is not None and not isinstance(args, list | tuple):
        return None  # a dict or Namespace of settings: left as given
    argv = list(args) if args is not None else sys.argv[1:]
    if "'torch.optim.Optimizer'" not in message or any(
        a in ("--optimizer", "--optimizer.class_path") or a.startswith(("--optimizer=", "--optimizer.class_path="))
        for a in argv
    ):
        return None
    first = next((i for i, a in enumerate(argv) if a.startswith("--optimizer.")), None)
    if first is None:
        return None
    return [*argv[:first], "--optimizer", str(DEFAULT_OPTIMIZER["class_path"]), *argv[first:]]


def _option_strings(parser: LightningArgumentParser, args: Any) -> list[str]:
    """The flags of the subcommand being parsed (for did-you-mean), or of the parser itself."""
    argv = list(args) if isinstance(args, list | tuple) else sys.argv[1:]
    subcommands = getattr(getattr(parser, "_subcommands_action", None), "choices", None) or {}
    command = next((a for a in argv if a in subcommands), None)
    target = subcommands[command] if command else parser
    return [o for o in target._option_string_actions if o.startswith("--")]


def launch_rank() -> int:
    """The global rank the launcher gave this process (torchrun, SLURM, Lightning's launcher); 0 if none."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return 0 if node == 0 and local == 0 else max(1, node + local)


def _sigterm_outside_training(signum: int, frame: Any) -> None:
    """Before and after training there is nothing to save: exit at once with 128 + SIGTERM."""
    sys.exit(143)


# Lightning messages that say nothing a lit_transfer user can act on: product tips; a deprecation inside Lightning's
# own code; logging-interval and sync_dist advice (metrics are logged once per epoch, already synchronised); the
# notice that a model's own callbacks (RotNet's prediction writer) replace the CLI's defaults, which is the intent.
_HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"It is recommended to use `self.log\('[^']*', \.\.\., sync_dist=True\)`",
)
_HARMLESS_INFO = ("💡 Tip:", "The following callbacks returned in `LightningModule.configure_callbacks` will override")


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_HARMLESS_INFO)


def quiet_lightning() -> None:
    """Silence the known-harmless Lightning messages, for the command line only (library use is unchanged)."""
    for pattern in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropHarmless) for f in logger.filters):
        logger.addFilter(_DropHarmless())


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m lit_transfer`` and the ``lit-transfer`` script."""
    argv = sys.argv[1:] if args is None else list(args)
    quiet_lightning()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_outside_training)
    keep_reserved()
    try:
        if argv and argv[0] in COMMANDS:
            run_command(argv[0], argv[1:])
            return
        LitTransferCLI(args=args)
    except (ConfigError, CheckpointMismatchError) as err:
        release_unused()
        print(f"lit_transfer: configuration error: {err}{_config_hint(argv, err)}", file=sys.stderr)
        sys.exit(2)
    except BadImageError as err:  # the data vanished or broke while running
        print(f"lit_transfer: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except SIGTERMException:
        print("lit_transfer: stopped by SIGTERM after saving interrupted.ckpt", file=sys.stderr)
        sys.exit(143)  # 128 + SIGTERM, what schedulers expect from a process ended by the signal
    except RuntimeError as err:
        if sigterm_received():  # another rank stopped first and this one's collective broke off: the same stop
            print(f"lit_transfer: stopped by SIGTERM ({str(err).splitlines()[0][:200]})", file=sys.stderr)
            sys.exit(143)
        hint = loader_hint(str(err))
        if hint is None:
            raise
        cause = [line.strip() for line in str(err).splitlines() if line.strip()][-1][:300]
        print(f"lit_transfer: stopped: {hint} ({cause})", file=sys.stderr)
        sys.exit(1)


def loader_hint(message: str) -> str | None:
    """Advice for DataLoader failures whose message does not say what to change."""
    if "shared memory" in message or "Bus error" in message or "/dev/shm" in message:
        return (
            "the DataLoader ran out of shared memory (/dev/shm). Give the container more (docker --shm-size=8g), "
            "lower data.init_args.num_workers or data.init_args.batch_size, or use num_workers: 0"
        )
    if "Too many open files" in message or "received 0 items of ancdata" in message:
        return (
            "too many open files: raise the limit (ulimit -n 65536) or lower data.init_args.num_workers; "
            "torch.multiprocessing.set_sharing_strategy('file_system') also helps"
        )
    if "DataLoader timed out" in message:
        return (
            "a DataLoader worker delivered no batch within data.init_args.loader_timeout seconds: a worker stuck "
            "reading a file (a hung network mount) or a transform that never returns; raise loader_timeout if the "
            "batches are just slow"
        )
    return None
