"""lit_transfer: transfer learning on images with PyTorch Lightning."""

from lit_transfer.data import BaseImageDataModule, Caltech101DataModule, ImageFolderDataModule, RotNetDataModule
from lit_transfer.models import RotNetClassifier, TransferClassifier

__version__ = "0.1.0"

__all__ = [
    "BaseImageDataModule",
    "Caltech101DataModule",
    "ImageFolderDataModule",
    "RotNetClassifier",
    "RotNetDataModule",
    "TransferClassifier",
    "__version__",
]
