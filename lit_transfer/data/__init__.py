"""Data modules: files → samples → transforms → batches, with splits and class names."""

from lit_transfer.data.base import BaseImageDataModule
from lit_transfer.data.caltech101 import Caltech101DataModule
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.data.rotnet import RotNetDataModule

__all__ = ["BaseImageDataModule", "Caltech101DataModule", "ImageFolderDataModule", "RotNetDataModule"]
