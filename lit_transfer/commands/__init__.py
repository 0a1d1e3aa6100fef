"""The commands beyond Lightning's fit/validate/test/predict, and their one front.

Each command is a typed Python function whose docstring documents its parameters; :data:`COMMANDS` registers it
under its command-line name. :func:`run` parses the command line of one with jsonargparse (``ArgumentParser`` and
``add_function_arguments``), so that every command has ``--help`` listing its options, ``--config`` (a YAML file of
the same options), type validation, and unknown options refused with exit status 2 and one line naming them.

Commands that read an experiment config:

* ``config="data"`` (``stats``): the parser also takes the ``data`` section of a fit config (the data module,
  built as ``fit`` builds it) and accepts, unparsed, the config's other sections, so a fit config is given as it is;
* ``parses_argv=True`` (``audit-rotnet``): the command's typed options (``--audit.*``) are added to the whole fit
  parser (LitTransferCLI's, jsonargparse too); the registered function receives the arguments and parses them so.

The registry names functions as ``"module:function"`` strings, imported only when their command runs, so that
``python -m lit_transfer --help`` stays fast and this package imports nothing above it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

from lit_transfer.config_errors import explain
from lit_transfer.core.errors import ConfigError


@dataclass(frozen=True)
class Command:
    """One command: the function it runs, its one-line summary, and what its ``--config`` holds.

    Attributes:
        target: ``"module:function"`` of the typed function whose parameters are the command's options.
        summary: one line for ``python -m lit_transfer --help``.
        config: ``"own"``: ``--config`` holds the command's options only; ``"data"``: also a fit config's data
            section (its other sections are accepted, unused).
        parses_argv: the function takes the argument list and parses it itself (with the fit parser).
        aliases: other spellings of options, e.g. ``{"--dry-run": "--dry_run"}``.
    """

    target: str
    summary: str
    config: Literal["own", "data"] = "own"
    parses_argv: bool = False
    aliases: dict[str, str] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        """The command's function (imports its module)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "stats": Command(
        "lit_transfer.commands.datacard:stats",
        "Write the data card of a config's data: counts, sizes, modes, duplicates and exact mean/std.",
        config="data",
    ),
    "audit-rotnet": Command(
        "lit_transfer.rotnet_audit:main",
        "Train a RotNet pipeline on pure noise to find out whether it leaks the angle (exit 1 on a leak).",
        parses_argv=True,
    ),
    "clean-cache": Command(
        "lit_transfer.commands.cache:clean_cache",
        "Delete the cached backbone features of a runs folder, and nothing else.",
        aliases={"--dry-run": "--dry_run"},
    ),
    "export": Command(
        "lit_transfer.export.command:export",
        "Export a checkpoint to ONNX or TorchScript, with its preprocessing and a parity check.",
    ),
    "backbones": Command(
        "lit_transfer.commands.backbones:main",
        "List backbone names, or show one's feature size, parameters, preprocessing and freeze stages.",
        parses_argv=True,
    ),
    "runs": Command(
        "lit_transfer.commands.runs:runs",
        "List the runs of a runs folder: backbone, best val_acc, test_acc, epochs, wall time and status.",
    ),
    "lr-find": Command(
        "lit_transfer.commands.lr_find:main",
        "Learning-rate range test on a fit config's model and data: suggested lr and the loss-vs-lr plot.",
        parses_argv=True,
    ),
}

# Top-level keys of a full fit config that a data-only command accepts and ignores.
NON_DATA_KEYS = (
    "trainer", "model", "optimizer", "lr_scheduler", "checkpoint", "cache_features", "reports", "seed_everything",
    "experiment", "runs_dir", "test_after_fit", "ckpt_path",
)  # fmt: skip


def description(function: Callable[..., Any]) -> str:
    """The docstring of ``function`` up to its ``Args:`` section (the options' help shows that), as plain text."""
    doc = inspect.cleandoc(function.__doc__ or "")
    return doc.split("\nArgs:", 1)[0].strip().replace("``", "")  # plain text: no reST literals in --help


def data_parser(prog: str = "lit_transfer", **kwargs: Any) -> ArgumentParser:
    """A parser of a fit config's ``data`` section (and ``--config``); its other sections are accepted, unparsed."""
    from lightning.pytorch.cli import LightningArgumentParser

    from lit_transfer.data import BaseImageDataModule

    parser = LightningArgumentParser(prog=prog, **kwargs)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), merged in order.")
    parser.add_lightning_class_args(BaseImageDataModule, "data", subclass_mode=True)
    return parser


def build_parser(name: str) -> ArgumentParser:
    """The parser of command ``name`` (not for ``parses_argv`` commands, which parse their arguments themselves)."""
    command = COMMANDS[name]
    function = command.load()
    prog = f"lit_transfer {name}"
    kwargs: dict[str, Any] = {"description": description(function), "exit_on_error": False}
    if command.config == "data":
        parser = data_parser(prog, **kwargs)
        parser.add_function_arguments(function, as_group=False, skip={"data"})
        for key in NON_DATA_KEYS:
            if f"--{key}" not in parser._option_string_actions:
                parser.add_argument(f"--{key}", type=Any, default=None, help="a fit config's section: not used")
    else:
        parser = ArgumentParser(prog=prog, **kwargs)
        parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options.")
        parser.add_function_arguments(function, as_group=False)
    for action in parser._actions:  # a bool option alone means true: --dry_run as well as --dry_run true
        if getattr(action, "_typehint", None) is bool:
            action.nargs, action.const = "?", True
    for alias, option in command.aliases.items():
        action = parser._option_string_actions[option]
        action.option_strings = [*action.option_strings, alias]
        parser._option_string_actions[alias] = action
    return parser


def parse(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    """Parse ``argv``; a bad option or value is one :class:`ConfigError` naming it."""
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        flags = [o for o in parser._option_string_actions if o.startswith("--")]
        raise ConfigError(explain(str(err), flags)) from None


def run(name: str, argv: Sequence[str]) -> Any:
    """Run command ``name`` with the command-line arguments ``argv`` (after the command's name)."""
    command = COMMANDS[name]
    if command.parses_argv:
        return command.load()(list(argv))
    function = command.load()
    parser = build_parser(name)
    config = parse(parser, argv)
    parameters = inspect.signature(function).parameters
    for key in NON_DATA_KEYS if command.config == "data" else ():
        if key not in parameters and key in config:
            config.pop(key)  # a fit config's other sections: never built (no model, no weights)
    try:
        init = getattr(parser, "instantiate", parser.instantiate_classes)(config)  # instantiate: jsonargparse 4.49+
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as err:
        raise ConfigError(str(err)) from err
    kwargs = {key: init.get(key) for key in parameters if key in init}
    if "experiment" in parameters and not kwargs.get("experiment") and config.get("config"):
        kwargs["experiment"] = Path(str(config["config"][-1])).stem  # as fit names its runs
    return function(**kwargs)
