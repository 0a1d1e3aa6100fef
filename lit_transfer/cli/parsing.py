"""Command-line parsing help: config files named in errors, the default optimizer, the flags for did-you-mean."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import yaml

from lit_transfer.core.lightning_private import option_strings, subcommand_parsers
from lit_transfer.models.optim import DEFAULT_OPTIMIZER


def config_file_problem(args: Any) -> str | None:
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


def with_default_optimizer(args: Any, message: str) -> list[str] | None:
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


def command_options(parser: Any, args: Any) -> list[str]:
    """The flags of the subcommand being parsed (for did-you-mean), or of the parser itself."""
    argv = list(args) if isinstance(args, list | tuple) else sys.argv[1:]
    subcommands = subcommand_parsers(parser)
    command = next((a for a in argv if a in subcommands), None)
    return option_strings(subcommands[command] if command else parser)


def config_hint(argv: list[str], err: Exception, subcommands: Any) -> str:
    """For fit/validate/test/predict missing what a config gives, and given no ``--config``: where configs are."""
    if not argv or argv[0] not in subcommands or "are required" not in str(err):
        return ""
    if any(a in ("--config", "-c") or a.startswith(("--config=", "-c=")) for a in argv):
        return ""
    return f"; give the experiment's config: python -m lit_transfer {argv[0]} --config configs/<experiment>.yaml"
