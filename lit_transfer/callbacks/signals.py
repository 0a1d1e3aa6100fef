"""SIGTERM during training: stop every rank at the next step, save, exit 143, and never hang."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lit_transfer.core.lightning_private import signal_connector

GRACE_ENV = "LIT_TRANSFER_SIGTERM_GRACE"
_RECEIVED = threading.Event()


def sigterm_received() -> bool:
    """Whether this process got SIGTERM during training.

    Ranks stop at slightly different points after the signal, so a rank that is still in a collective when another
    has already left fails with a connection error; that failure is part of the stop, not a crash.
    """
    return _RECEIVED.is_set()


def start_watchdog() -> None:
    """End this process with status 143 if it is still running ``LIT_TRANSFER_SIGTERM_GRACE`` seconds from now."""
    grace = float(os.environ.get(GRACE_ENV, "120"))

    def expire() -> None:
        print(f"lit_transfer: still running {grace:g}s after SIGTERM; exiting with status 143", file=sys.stderr)
        os._exit(143)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


class SigtermHandler(Callback):
    """Replace Lightning's SIGTERM handler for the duration of training.

    Lightning's handler runs a ``broadcast`` collective inside the signal handler; when only one rank is signalled
    (or ranks are signalled while in different collectives) that broadcast never matches and every rank hangs
    (Lightning #20806, reproduced here on gloo). This handler only records the signal, forwards it to the launcher's
    child processes like Lightning does, and starts a watchdog; the training loop then stops every rank at the next
    step (Lightning shares rank 0's flag there), ``interrupted.ckpt`` is saved and the process exits 143. If a rank
    cannot get there, the watchdog ends it after the grace period and the launcher stops the others.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the handler (Lightning installs its own just before training starts)."""
        if threading.current_thread() is not threading.main_thread():
            return
        connector = signal_connector(trainer)

        def handle(signum: int, frame: FrameType | None) -> None:
            _RECEIVED.set()
            start_watchdog()
            if not connector.received_sigterm and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)
            connector.received_sigterm = True

        signal.signal(signal.SIGTERM, handle)
