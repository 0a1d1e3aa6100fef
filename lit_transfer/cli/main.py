"""``python -m lit_transfer``: the commands, and how each way of stopping is reported (exit 2, 1 or 143)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_transfer.callbacks.signals import sigterm_received
from lit_transfer.cli.app import LitTransferCLI
from lit_transfer.cli.messages import loader_hint, quiet_lightning
from lit_transfer.cli.parsing import config_hint
from lit_transfer.commands import COMMANDS
from lit_transfer.commands import run as run_command
from lit_transfer.commands.lr_find import with_auto_lr
from lit_transfer.core.errors import CheckpointMismatchError, ConfigError
from lit_transfer.core.launch import close_process_group
from lit_transfer.core.run_folder import keep_reserved, release_unused
from lit_transfer.data.images import BadImageError

# Subcommands beyond Trainer's fit/validate/test/predict (lit_transfer.commands.COMMANDS): name → "module:function".
EXTRA_COMMANDS: dict[str, str] = {name: command.target for name, command in COMMANDS.items()}


def _sigterm_outside_training(signum: int, frame: Any) -> None:
    """Before and after training there is nothing to save: exit at once with 128 + SIGTERM."""
    sys.exit(143)


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
        if argv and argv[0] == "fit":
            resolved = with_auto_lr(argv)  # --optimizer.lr auto: the range test's suggestion
            if resolved != argv and args is None:
                sys.argv[1:] = resolved  # Lightning's DDP launcher starts the other processes with this command line
            elif resolved != argv:
                args = resolved
        LitTransferCLI(args=args)
        close_process_group()
    except (ConfigError, CheckpointMismatchError) as err:
        release_unused()
        where = config_hint(argv, err, LitTransferCLI.subcommands())
        print(f"lit_transfer: configuration error: {err}{where}", file=sys.stderr)
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
