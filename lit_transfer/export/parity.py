"""The parity check: the exported file, loaded back and run on random ``uint8`` batches, against the PyTorch model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_transfer.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportFormat, quiet_deprecations
from lit_transfer.models.classifier import TransferClassifier

DEFAULT_TOLERANCE = 1e-4
PARITY_BATCH_SIZES: tuple[int, ...] = (1, 3, 8)


class ParityError(Exception):
    """The exported file does not run on a parity batch, or gives outputs of the wrong shape."""


def sample_batches(image_size: int, batch_sizes: Sequence[int] = PARITY_BATCH_SIZES, seed: int = 0) -> list[np.ndarray]:
    """Random ``uint8`` image batches ``(n, 3, image_size, image_size)``, one per batch size."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8) for n in batch_sizes]


def exported_runner(path: Path, fmt: ExportFormat) -> Any:
    """A function running the exported file on a ``uint8`` batch: ``array -> (logits, probabilities)``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    with quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in loaded(torch.from_numpy(batch))]

    return run


def check_parity(
    model: TransferClassifier, path: Path, fmt: ExportFormat, image_size: int, batch_sizes: Sequence[int]
) -> dict[str, float]:
    """Largest absolute difference per output between the exported file and ``model.forward`` (+ softmax).

    The expected probabilities are the model's: ``softmax(logits / temperature)``.

    A NaN difference counts as infinite.

    Raises:
        ParityError: the file cannot be loaded or run on a batch, or an output has the wrong shape.
    """
    try:
        run = exported_runner(path, fmt)
    except Exception as err:
        raise ParityError(f"the exported file cannot be loaded: {type(err).__name__}: {err}") from err
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for batch in sample_batches(image_size, batch_sizes):
        with torch.no_grad():
            logits = model(torch.from_numpy(batch))
        expected = (logits.numpy(), model.calibrated(logits).softmax(dim=1).numpy())
        try:
            outputs = run(batch)
        except Exception as err:
            raise ParityError(
                f"the exported model fails on a batch of {len(batch)}: {type(err).__name__}: {err}"
            ) from err
        for name, got, want in zip(OUTPUT_NAMES, outputs, expected, strict=True):
            if got.shape != want.shape:
                raise ParityError(f"{name} has shape {got.shape} for a batch of {len(batch)}, expected {want.shape}")
            diff = float(np.abs(got.astype(np.float64) - want).max())
            worst[name] = max(worst[name], math.inf if math.isnan(diff) else diff)
    return worst
