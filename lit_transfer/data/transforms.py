"""Transform presets by name: one place where a decoded image becomes a tensor.

Every preset ends in a ``uint8`` CHW tensor. Conversion to float and normalization happen on the whole batch inside
the model (:class:`lit_transfer.models.TransferClassifier`), on the device, with the mean/std of the backbone's
weights: the data pipeline never needs to know the model, batches are 4x smaller to copy, and exported models
carry their own normalization.

Sizes and interpolation come from a :class:`~lit_transfer.core.preprocessing.Preprocessing` (the CLI resolves it
from the backbone's weights); a plain ``image_size`` means lit_transfer's defaults at that size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from lit_transfer.core.preprocessing import DEFAULT_CROP_PCT, Preprocessing
from lit_transfer.data.tta import CropViews, check_tta, view_stage

Transform = Callable[..., torch.Tensor]
TransformPreset = Callable[[Preprocessing], Transform]
TRANSFORM_PRESETS: dict[str, TransformPreset] = {}

EVAL_CROP_RATIO = DEFAULT_CROP_PCT  # resize to image_size / 0.875 then center-crop, as ImageNet evaluation does


def as_preprocessing(size: int | Preprocessing) -> Preprocessing:
    """``size`` itself when it is a :class:`Preprocessing`, else lit_transfer's default preprocessing at ``size``."""
    return size if isinstance(size, Preprocessing) else Preprocessing.default(int(size))


def interpolation_mode(name: str) -> InterpolationMode:
    """The torchvision interpolation mode called ``name`` (``bilinear``, ``bicubic``, ``nearest``).

    ``nearest`` is torchvision's ``nearest-exact``: pixel centres as Pillow (and so timm's own pipeline) picks them.
    """
    return InterpolationMode.NEAREST_EXACT if name == "nearest" else InterpolationMode(name)


class ResizeLongSide(torch.nn.Module):
    """Resize so the long side is ``size``, the short side rounded (timm's ``ResizeKeepRatio(longest=1)``)."""

    def __init__(self, size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.size = size
        self.interpolation = interpolation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The resized ``uint8`` CHW image."""
        height, width = image.shape[-2:]
        ratio = max(height, width) / self.size
        target = [round(height / ratio), round(width / ratio)]
        if target == [height, width]:
            return image
        return TF.resize(image, target, interpolation=self.interpolation, antialias=True)

    def extra_repr(self) -> str:
        """Size and interpolation, so the feature cache tells two of them apart."""
        return f"size={self.size}, interpolation={self.interpolation.value}"


class CenterCropOrPad(torch.nn.Module):
    """The central ``size`` square, padded with ``fill`` where the image is smaller (timm's ``border`` crop mode)."""

    def __init__(self, size: int, fill: tuple[int, ...]) -> None:
        super().__init__()
        self.size = size
        self.fill = list(fill)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Pad (centred, ``fill``) to at least ``size`` on both sides, then crop the central square."""
        height, width = image.shape[-2:]
        pad_w, pad_h = max(self.size - width, 0), max(self.size - height, 0)
        if pad_w or pad_h:
            padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]
            channels = [TF.pad(image[c : c + 1], padding, fill=v) for c, v in enumerate(self.fill[: image.shape[0]])]
            image = torch.cat(channels)
        return TF.center_crop(image, [self.size, self.size])

    def extra_repr(self) -> str:
        """Size and fill, so the feature cache tells two of them apart."""
        return f"size={self.size}, fill={self.fill}"


def register_transform(name: str) -> Callable[[TransformPreset], TransformPreset]:
    """Register a train transform preset under ``name``; a name is registered once.

    A preset is a function of the :class:`Preprocessing` (its ``input_size`` is the output side, its
    ``interpolation`` the weights'), returning a transform from a PIL image to a ``uint8`` CHW tensor.

    Raises:
        ValueError: ``name`` is already a preset (``standard``, ``seed002``, ``none`` or one registered before).
    """
    if name in TRANSFORM_PRESETS:
        raise ValueError(
            f"augmentation preset {name!r} is already registered ({TRANSFORM_PRESETS[name].__qualname__}); "
            "choose another name"
        )

    def wrap(fn: TransformPreset) -> TransformPreset:
        if name in TRANSFORM_PRESETS:  # registered between the decorator's creation and its application
            raise ValueError(f"augmentation preset {name!r} is already registered")
        TRANSFORM_PRESETS[name] = fn
        return fn

    return wrap


def eval_transform(preprocessing: int | Preprocessing, tta: str = "none") -> Transform:
    """The evaluation view: resize (``crop_mode`` ``center``, ``squash`` or ``border``), then the central crop.

    An ``int`` is lit_transfer's default: short side to ``image_size / 0.875`` (bilinear), center crop. With
    test-time augmentation (``tta``, see :mod:`~lit_transfer.data.tta`) the result is a stack ``(V, C, H, W)``:
    ``flip`` the view and its mirror; ``five_crop``/``ten_crop`` torchvision's crops of the resized image in place
    of the central crop.
    """
    pre = as_preprocessing(preprocessing)
    check_tta(tta, pre)
    mode = interpolation_mode(pre.interpolation)
    if pre.crop_mode == "squash":
        resize = v2.Resize((pre.resize_size, pre.resize_size), interpolation=mode, antialias=True)
        crop: Transform = v2.CenterCrop(pre.input_size)
    elif pre.crop_mode == "border":
        resize = ResizeLongSide(pre.resize_size, mode)
        crop = CenterCropOrPad(pre.input_size, tuple(round(255 * m) for m in pre.mean))
    else:
        resize = v2.Resize(pre.resize_size, interpolation=mode, antialias=True)
        crop = v2.CenterCrop(pre.input_size)
    views = view_stage(tta, pre.input_size)
    if isinstance(views, CropViews):
        return v2.Compose([v2.PILToTensor(), resize, views])
    return v2.Compose([v2.PILToTensor(), resize, crop, *([views] if views is not None else [])])


@register_transform("standard")
def standard_transform(pre: Preprocessing) -> Transform:
    """RandomResizedCrop + horizontal flip: the usual ImageNet fine-tuning recipe."""
    mode = interpolation_mode(pre.interpolation)
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(pre.input_size, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )


@register_transform("seed002")
def seed002_transform(pre: Preprocessing) -> Transform:
    """The Caltech101 tutorial's augmentation, scaled to the input size (256 → 224 at the default size).

    ``ColorJitter()`` is kept with its default arguments, as in the tutorial, where it changes nothing.
    """
    mode = interpolation_mode(pre.interpolation)
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(
                round(pre.input_size * 256 / 224), scale=(0.8, 1.0), interpolation=mode, antialias=True
            ),
            v2.RandomRotation(15),
            v2.ColorJitter(),
            v2.RandomHorizontalFlip(),
            v2.CenterCrop(pre.input_size),
        ]
    )


@register_transform("none")
def no_augmentation(pre: Preprocessing) -> Transform:
    """No augmentation: training images get the evaluation resize and crop."""
    return eval_transform(pre)


def tensor_op_interpolation(mode: InterpolationMode) -> InterpolationMode:
    """``mode``, or the nearest mode that torchvision's rotate/shear/translate accept on tensors.

    Those kernels take only ``nearest`` and ``bilinear`` on tensors: ``bicubic`` weights get ``bilinear`` there (one
    of the two modes timm's auto-augment picks from), ``nearest`` (``nearest-exact``) gets plain ``nearest``.
    """
    if mode in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR):
        return mode
    return InterpolationMode.NEAREST if mode == InterpolationMode.NEAREST_EXACT else InterpolationMode.BILINEAR


def _crop_flip_then(pre: Preprocessing, augment: Transform) -> Transform:
    """The ``standard`` crop and flip (in the weights' interpolation), then ``augment`` on the ``uint8`` crop."""
    mode = interpolation_mode(pre.interpolation)
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(pre.input_size, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
            augment,
        ]
    )


@register_transform("trivialaugment")
def trivialaugment_transform(pre: Preprocessing) -> Transform:
    """RandomResizedCrop + flip + ``TrivialAugmentWide`` (one random op at a random magnitude per image)."""
    mode = tensor_op_interpolation(interpolation_mode(pre.interpolation))
    return _crop_flip_then(pre, v2.TrivialAugmentWide(interpolation=mode))


@register_transform("randaugment")
def randaugment_transform(pre: Preprocessing) -> Transform:
    """RandomResizedCrop + flip + ``RandAugment`` with torchvision's defaults (2 ops, magnitude 9 of 31)."""
    mode = tensor_op_interpolation(interpolation_mode(pre.interpolation))
    return _crop_flip_then(pre, v2.RandAugment(num_ops=2, magnitude=9, interpolation=mode))


@register_transform("autoaugment")
def autoaugment_transform(pre: Preprocessing) -> Transform:
    """RandomResizedCrop + flip + ``AutoAugment`` with the ImageNet policy."""
    mode = tensor_op_interpolation(interpolation_mode(pre.interpolation))
    return _crop_flip_then(pre, v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode))


RANDOM_ERASING_P = 0.25  # timm's ``reprob`` in its ImageNet recipes (torchvision's default is 0.5)


@register_transform("random_erasing")
def random_erasing_transform(pre: Preprocessing) -> Transform:
    """The ``standard`` preset, then ``RandomErasing`` (p 0.25) of one rectangle, filled with the weights' mean colour.

    torchvision's and timm's recipes erase after normalization, where their fill ``0`` is the mean colour; here
    erasing runs on the ``uint8`` image before normalization, so the fill is the mean in ``0..255`` (``0`` would
    be black, and ``value="random"`` draws normal values that wrap around in ``uint8``).
    """
    fill = [float(round(255 * m)) for m in pre.mean]
    return _crop_flip_then(pre, v2.RandomErasing(p=RANDOM_ERASING_P, value=fill))


# Transforms that map an image to the same output every time (no random parameters).
DETERMINISTIC_TRANSFORMS: tuple[type, ...] = (
    v2.PILToTensor, v2.ToImage, v2.ToDtype, v2.ToPureTensor, v2.Resize, v2.CenterCrop, v2.Normalize, v2.Grayscale,
    v2.Identity, v2.Pad, v2.RGB, ResizeLongSide, CenterCropOrPad,
)  # fmt: skip


def is_deterministic(transform: Transform) -> bool:
    """Whether ``transform`` gives the same output for the same image every time (so its results can be cached).

    A ``Compose`` is deterministic when every step is one of :data:`DETERMINISTIC_TRANSFORMS`; anything else,
    including an unknown callable, counts as random.
    """
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(t) for t in transform.transforms)
    return isinstance(transform, DETERMINISTIC_TRANSFORMS)


def train_transform(name: str, preprocessing: int | Preprocessing) -> Transform:
    """The train transform preset ``name`` for ``preprocessing`` (an ``int``: the default one at that size)."""
    if name not in TRANSFORM_PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; valid presets: {sorted(TRANSFORM_PRESETS)}")
    return TRANSFORM_PRESETS[name](as_preprocessing(preprocessing))
