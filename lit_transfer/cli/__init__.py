"""The ``lit_transfer`` command line.

``app`` (LitTransferCLI: LightningCLI with run folders, default callbacks and data → model links), ``calibration``
(``--calibrate temperature`` after fit), ``checkpoints`` (``--ckpt_path`` resolved and checked before anything is
built), ``checks`` (mistakes found before training), ``parsing`` (config files, the default optimizer, did-you-mean
flags), ``messages`` (what is silenced, loader hints) and ``main`` (the commands and their exit statuses).
"""

from lit_transfer.cli.app import DEFAULT_SEED, LitTransferCLI
from lit_transfer.cli.checkpoints import checkpoint_state
from lit_transfer.cli.main import EXTRA_COMMANDS, main
from lit_transfer.cli.messages import loader_hint, quiet_lightning
from lit_transfer.core.errors import ConfigError
from lit_transfer.core.launch import launch_rank

__all__ = [
    "DEFAULT_SEED",
    "EXTRA_COMMANDS",
    "ConfigError",
    "LitTransferCLI",
    "checkpoint_state",
    "launch_rank",
    "loader_hint",
    "main",
    "quiet_lightning",
]
