"""The exported graph: ``uint8`` NCHW images in, ``logits`` and ``probabilities`` out; the formats it is written in."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from lit_transfer.models.classifier import TransferClassifier

ExportFormat = Literal["onnx", "torchscript"]
DEFAULT_SUFFIX: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, str] = ("logits", "probabilities")

# The legacy (TorchScript-based) ONNX exporter and torch.jit.trace are deprecated in torch 2.x but are what exports
# without extra dependencies; their deprecation notices say nothing a user of this command can act on.
_QUIET_WARNINGS: tuple[str, ...] = (
    r".*legacy TorchScript-based ONNX export.*",
    r"`torch\.jit\.\w+` is deprecated.*",
    r"The feature will be removed.*",
)


class ExportModule(nn.Module):
    """``uint8`` NCHW images → ``(logits, probabilities)``: the model's normalization, backbone and head.

    ``probabilities`` are ``softmax(logits / temperature)``, with the model's temperature (1 unless it was
    calibrated with ``--calibrate temperature``); ``logits`` are the head's, undivided.

    The LightningModule itself is not traced: its ``trainer`` property raises outside a Trainer and its metrics have
    no place in an inference graph. The parity check compares this module's export with the model's own ``forward``.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, model: TransferClassifier) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.register_buffer("mean", model.mean.detach().clone())
        self.register_buffer("std", model.std.detach().clone())
        self.register_buffer("temperature", model.temperature.detach().clone().float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and (calibrated) softmax probabilities of a ``uint8`` batch."""
        x = (images.float() / 255.0 - self.mean) / self.std
        logits = self.head(self.backbone(x))
        return logits, (logits / self.temperature).softmax(dim=1)


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence torch's deprecation notices of the exporters (:data:`_QUIET_WARNINGS`)."""
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield
