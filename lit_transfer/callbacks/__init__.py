"""Lightning callbacks of lit_transfer."""

from lit_transfer.callbacks.checkpoint import RunCheckpoint
from lit_transfer.callbacks.ema import WeightEMA
from lit_transfer.callbacks.feature_cache import FeatureCache
from lit_transfer.callbacks.predictions import PredictionWriter
from lit_transfer.callbacks.projector import EmbeddingProjector as EmbeddingProjector
from lit_transfer.callbacks.reports import TensorBoardReports
from lit_transfer.callbacks.run_summary import RunSummary
from lit_transfer.callbacks.upright import RotationPredictionWriter

__all__ = [
    "FeatureCache",
    "PredictionWriter",
    "RotationPredictionWriter",
    "RunCheckpoint",
    "RunSummary",
    "TensorBoardReports",
    "WeightEMA",
]
