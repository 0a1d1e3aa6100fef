"""What the command line says: known-harmless Lightning messages silenced, and hints for loader failures."""

from __future__ import annotations

import logging
import warnings

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
