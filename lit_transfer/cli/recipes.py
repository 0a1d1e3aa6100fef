"""Recipe presets: ``--recipe NAME`` (``recipe: NAME`` in YAML) as ordinary settings a run starts from.

A recipe is a mapping of config keys, inserted as the first ``--config`` of the command, so every config file and
flag given by the user overrides it, and ``--print_config`` (and the run's ``config.yaml``) shows what it expanded
to. A new recipe is one entry of :data:`RECIPES`.

- ``linear_probe``: the backbone frozen for the whole run, no training augmentation, so the feature cache computes
  the backbone's features once and only the head trains (a few seconds an epoch); AdamW with cosine decay.
- ``fine_tune``: fastai's ``fine_tune``: one epoch with the backbone frozen (the new head settles), then everything
  trains with discriminative learning rates (each backbone stage half the rate of the one above it:
  ``layer_decay: 0.5``), and the warm-up + cosine cycle starts again at the unfreeze (``restart_at_unfreeze``), so
  the thawed backbone first sees a small learning rate.
- ``full``: every parameter trains from the first step at one rate, with a one-epoch warm-up, cosine decay and
  label smoothing.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

RecipeName = Literal["linear_probe", "fine_tune", "full"]

RECIPES: dict[str, dict[str, Any]] = {
    "linear_probe": {
        "model": {
            "init_args": {
                "freeze": "backbone",
                "unfreeze_at_epoch": None,
                "unfreeze_milestones": None,
                "layer_decay": None,
                "warmup_epochs": 0.0,
                "cosine": True,
                "restart_at_unfreeze": False,
            }
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.0001}},
        "data": {"init_args": {"augmentation": "none"}},
        "cache_features": {"enabled": "auto"},
    },
    "fine_tune": {
        "model": {
            "init_args": {
                "freeze": "backbone",
                "unfreeze_at_epoch": 1,
                "unfreeze_milestones": None,
                "layer_decay": 0.5,
                "warmup_epochs": 0.3,
                "cosine": True,
                "restart_at_unfreeze": True,
            }
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002, "weight_decay": 0.01}},
    },
    "full": {
        "model": {
            "init_args": {
                "freeze": "none",
                "unfreeze_at_epoch": None,
                "unfreeze_milestones": None,
                "layer_decay": None,
                "warmup_epochs": 1.0,
                "cosine": True,
                "restart_at_unfreeze": False,
                "label_smoothing": 0.1,
            }
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.0005, "weight_decay": 0.05}},
    },
}

RECIPE_HELP = (
    "Start from a recipe's settings (your config files and flags override them; --print_config shows them): "
    "linear_probe (frozen backbone, cached features, head only), fine_tune (one frozen epoch, then everything with "
    "per-stage learning rates, the warm-up/cosine cycle restarted), full (everything trains, warm-up + cosine)."
)


def recipe_yaml(name: str) -> str:
    """The recipe's settings as the YAML text of a ``--config``."""
    if name not in RECIPES:
        raise ValueError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return yaml.safe_dump(RECIPES[name], sort_keys=False)


def _config_recipe(name: str) -> str | None:
    try:
        content = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return None  # jsonargparse's own message names the file
    value = content.get("recipe") if isinstance(content, dict) else None
    return str(value) if value is not None else None


def requested_recipe(argv: list[str]) -> str | None:
    """The recipe the command names: the last ``--recipe`` flag or ``recipe:`` key of a ``--config`` file."""
    found: str | None = None
    for arg, value in itertools.pairwise([*argv, ""]):
        if arg in ("--config", "-c"):
            found = _config_recipe(value) or found
        elif arg.startswith(("--config=", "-c=")):
            found = _config_recipe(arg.partition("=")[2]) or found
        elif arg == "--recipe":
            found = value
        elif arg.startswith("--recipe="):
            found = arg.partition("=")[2]
    return None if found in (None, "null", "None", "") else found


def with_recipe(args: Any, subcommands: Any) -> Any:
    """``args`` with the named recipe's settings inserted as the first config after the subcommand.

    ``args`` as given (a dict or Namespace of settings, or a command line naming no recipe) is returned unchanged.
    """
    if args is not None and not isinstance(args, list | tuple):
        return args
    argv = list(args) if args is not None else sys.argv[1:]
    name = requested_recipe(argv)
    if name is None:
        return args
    settings = recipe_yaml(name)
    if settings in argv:  # already expanded (a DDP process started with the launcher's expanded command line)
        return args
    position = next((i + 1 for i, a in enumerate(argv) if a in subcommands), 0)
    return [*argv[:position], "--config", settings, *argv[position:]]
