"""Models: backbone registry, heads, freezing and the TransferClassifier task."""

from lit_transfer.models.backbones import build_backbone, list_backbones, register_backbone
from lit_transfer.models.classifier import TransferClassifier
from lit_transfer.models.rotnet import RotNetClassifier

__all__ = ["RotNetClassifier", "TransferClassifier", "build_backbone", "list_backbones", "register_backbone"]
