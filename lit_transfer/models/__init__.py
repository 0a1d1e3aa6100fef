"""Models: backbone registry, heads, freezing and the TransferClassifier task."""

from lit_transfer.models.backbones import build_backbone, list_backbones, register_backbone
from lit_transfer.models.classifier import TransferClassifier

__all__ = ["TransferClassifier", "build_backbone", "list_backbones", "register_backbone"]
