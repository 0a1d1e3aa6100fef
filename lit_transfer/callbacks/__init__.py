"""Lightning callbacks of lit_transfer."""

from lit_transfer.callbacks.checkpoint import RunCheckpoint
from lit_transfer.callbacks.predictions import PredictionWriter

__all__ = ["PredictionWriter", "RunCheckpoint"]
