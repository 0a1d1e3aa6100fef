"""Transform presets by name: one place where a decoded image becomes a tensor.

Every preset ends in a ``uint8`` CHW tensor. Conversion to float and normalization happen on the whole batch inside
the model (:class:`lit_transfer.models.TransferClassifier`), on the device, with the mean/std of the backbone's
weights: the data pipeline never needs to know the model, batches are 4x smaller to copy, and exported models
carry their own normalization.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

Transform = Callable[..., torch.Tensor]
TRANSFORM_PRESETS: dict[str, Callable[[int], Transform]] = {}

EVAL_CROP_RATIO = 0.875  # resize to image_size / 0.875 then center-crop, as ImageNet evaluation does (256 → 224)


def register_transform(name: str) -> Callable[[Callable[[int], Transform]], Callable[[int], Transform]]:
    """Register a train transform preset under ``name`` (a function of ``image_size``); a name is registered once.

    Raises:
        ValueError: ``name`` is already a preset (``standard``, ``seed002``, ``none`` or one registered before).
    """
    if name in TRANSFORM_PRESETS:
        raise ValueError(
            f"augmentation preset {name!r} is already registered ({TRANSFORM_PRESETS[name].__qualname__}); "
            "choose another name"
        )

    def wrap(fn: Callable[[int], Transform]) -> Callable[[int], Transform]:
        if name in TRANSFORM_PRESETS:  # registered between the decorator's creation and its application
            raise ValueError(f"augmentation preset {name!r} is already registered")
        TRANSFORM_PRESETS[name] = fn
        return fn

    return wrap


def eval_transform(image_size: int) -> Transform:
    """Resize the short side to ``image_size / 0.875`` and center-crop ``image_size``."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(round(image_size / EVAL_CROP_RATIO), antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


@register_transform("standard")
def standard_transform(image_size: int) -> Transform:
    """RandomResizedCrop + horizontal flip: the usual ImageNet fine-tuning recipe."""
    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])


@register_transform("seed002")
def seed002_transform(image_size: int) -> Transform:
    """The Caltech101 tutorial's augmentation, scaled to ``image_size`` (256 → 224 at the default size).

    ``ColorJitter()`` is kept with its default arguments, as in the tutorial, where it changes nothing.
    """
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(round(image_size * 256 / 224), scale=(0.8, 1.0), antialias=True),
            v2.RandomRotation(15),
            v2.ColorJitter(),
            v2.RandomHorizontalFlip(),
            v2.CenterCrop(image_size),
        ]
    )


@register_transform("none")
def no_augmentation(image_size: int) -> Transform:
    """No augmentation: training images get the evaluation resize and crop."""
    return eval_transform(image_size)


# Transforms that map an image to the same output every time (no random parameters).
DETERMINISTIC_TRANSFORMS: tuple[type, ...] = (
    v2.PILToTensor, v2.ToImage, v2.ToDtype, v2.ToPureTensor, v2.Resize, v2.CenterCrop, v2.Normalize, v2.Grayscale,
    v2.Identity, v2.Pad, v2.RGB,
)  # fmt: skip


def is_deterministic(transform: Transform) -> bool:
    """Whether ``transform`` gives the same output for the same image every time (so its results can be cached).

    A ``Compose`` is deterministic when every step is one of :data:`DETERMINISTIC_TRANSFORMS`; anything else,
    including an unknown callable, counts as random.
    """
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(t) for t in transform.transforms)
    return isinstance(transform, DETERMINISTIC_TRANSFORMS)


def train_transform(name: str, image_size: int) -> Transform:
    """The train transform preset ``name`` at ``image_size``."""
    if name not in TRANSFORM_PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; valid presets: {sorted(TRANSFORM_PRESETS)}")
    return TRANSFORM_PRESETS[name](image_size)
