"""The evaluation preprocessing of a backbone's weights, read from their own metadata without loading them.

:func:`resolve_preprocessing` takes, in this order: the values given explicitly, then the weights' own config
(a torchvision weights enum's ``transforms`` preset, a timm model's ``pretrained_cfg``), then lit_transfer's
defaults (resize to ``image_size / 0.875``, bilinear, ImageNet mean/std). Nothing is downloaded and no weights are
loaded: a torchvision enum carries its metadata, and timm's configs are registered with its architectures.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torchvision

from lit_transfer.core.preprocessing import DEFAULT_CROP_PCT, Preprocessing
from lit_transfer.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRETRAINED,
    TORCHVISION_PREFIX,
    is_weights_file,
    list_backbones,
    resolve_weights,
)
from lit_transfer.models.timm_source import HF_HUB_PREFIX, TIMM_PREFIX, check_timm_name, is_timm_name, timm_model_name

DEFAULT_IMAGE_SIZE = 224  # the data modules' default image_size


@dataclass(frozen=True)
class _WeightsConfig:
    """What a weights' own metadata says: crop size, resize, interpolation, mean/std, and how resize follows size."""

    input_size: int
    resize_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    floor: bool  # timm computes resize = floor(size / crop_pct); lit_transfer and torchvision round
    crop_mode: str = "center"


def resolve_preprocessing(
    backbone: str,
    weights: str | None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The evaluation preprocessing of ``backbone`` with ``weights``: explicit values, the weights' config, defaults.

    Args:
        backbone: a torchvision builder name (``resnet50``, ``torchvision/resnet50``), a registered name, or a timm
            name ``timm/<architecture>[.<tag>]``.
        weights: a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``), ``pretrained`` (timm), ``None`` or a
            local file. With ``None`` or a file a timm name still has its architecture's (or tag's) config; a
            torchvision name gets lit_transfer's defaults.
        image_size: the crop size, instead of the weights'; the resize keeps the weights' crop ratio.
        mean: per-channel mean, instead of the weights'.
        std: per-channel standard deviation, instead of the weights'.

    Raises:
        ValueError: an unknown backbone, tag or torchvision weights name (naming close matches).
    """
    cfg = _weights_config(backbone, weights)
    crop_pct = cfg.crop_pct if cfg else DEFAULT_CROP_PCT
    size = image_size if image_size is not None else cfg.input_size if cfg else DEFAULT_IMAGE_SIZE
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, not {image_size}")
    if cfg is not None and size == cfg.input_size:
        resize = cfg.resize_size
    elif cfg is not None and cfg.floor:
        resize = math.floor(size / crop_pct)
    else:
        resize = round(size / crop_pct)
    return Preprocessing(
        input_size=size,
        resize_size=resize,
        crop_pct=crop_pct,
        interpolation=cfg.interpolation if cfg else "bilinear",
        mean=tuple(float(m) for m in mean) if mean is not None else cfg.mean if cfg else IMAGENET_MEAN,
        std=tuple(float(s) for s in std) if std is not None else cfg.std if cfg else IMAGENET_STD,
        crop_mode=cfg.crop_mode if cfg else "center",
    )


def size_mismatch_warning(pre: Preprocessing, image_size: int) -> str | None:
    """A warning naming both sizes when the data's ``image_size`` is not the size ``pre``'s weights were trained at."""
    if image_size == pre.input_size:
        return None
    return (
        f"data image_size {image_size} differs from the {pre.input_size} px these weights were trained at (resize "
        f"{pre.resize_size}, center crop {pre.input_size}, {pre.interpolation}); pretrained features are usually "
        f"best at their own size: set data.image_size: {pre.input_size}, or keep {image_size} on purpose"
    )


def _weights_config(backbone: str, weights: str | None) -> _WeightsConfig | None:
    """The weights' own preprocessing config, or ``None`` when they have none (random init, a file, no metadata)."""
    if is_timm_name(backbone):
        return _timm_config(backbone, weights)
    name = backbone.removeprefix(TORCHVISION_PREFIX)
    if name not in list_backbones():
        close = difflib.get_close_matches(name, list_backbones(), n=5, cutoff=0.5)
        hint = f"did you mean {close}?" if close else "see lit_transfer.models.list_backbones()"
        raise ValueError(f"unknown backbone {name!r}; {hint}, or a timm model as {TIMM_PREFIX}<name>")
    if weights is None or is_weights_file(weights):
        return None
    return _torchvision_config(name, weights)


def _torchvision_config(name: str, weights: str) -> _WeightsConfig | None:
    """A torchvision enum's ``transforms`` preset, read from the ``functools.partial`` (nothing is called)."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"backbone {name!r} has no named weights; use weights: null or a local file")
    enum = resolve_weights(name, weights)
    preset = enum.transforms
    if not isinstance(preset, functools.partial):
        return None
    values: dict[str, Any] = {
        key: p.default
        for key, p in inspect.signature(preset.func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    values |= preset.keywords
    if "crop_size" not in values:
        return None
    crop = _side(values["crop_size"])
    resize = _side(values.get("resize_size", crop))
    interpolation = values.get("interpolation", "bilinear")
    return _WeightsConfig(
        input_size=crop,
        resize_size=resize,
        crop_pct=crop / resize,
        interpolation=str(getattr(interpolation, "value", interpolation)),
        mean=tuple(float(m) for m in values.get("mean", IMAGENET_MEAN)),
        std=tuple(float(s) for s in values.get("std", IMAGENET_STD)),
        floor=False,
    )


def _timm_config(backbone: str, weights: str | None) -> _WeightsConfig | None:
    """A timm name's ``pretrained_cfg`` (its tag's, else the architecture's default tag's)."""
    import timm.models

    if weights is not None and weights != PRETRAINED and not is_weights_file(weights):
        raise ValueError(
            f"unknown weights {weights!r} for timm backbone {backbone!r}: use {PRETRAINED}, null or a weights file"
        )
    check_timm_name(backbone)
    model_name = timm_model_name(backbone)
    if model_name.startswith(HF_HUB_PREFIX):  # its config lives on the Hub: not read here
        return None
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or cfg.input_size is None:
        return None
    size = _side(cfg.input_size)
    crop_pct = float(cfg.crop_pct or DEFAULT_CROP_PCT)
    return _WeightsConfig(
        input_size=size,
        resize_size=math.floor(size / crop_pct),  # as timm's eval transform does (every crop_mode)
        crop_pct=crop_pct,
        interpolation=str(cfg.interpolation or "bilinear"),
        mean=tuple(float(m) for m in cfg.mean),
        std=tuple(float(s) for s in cfg.std),
        floor=True,
        crop_mode=str(getattr(cfg, "crop_mode", None) or "center"),
    )


def _side(size: Any) -> int:
    """A square size from ``224``, ``[224]``, ``(224, 224)`` or timm's ``(3, 224, 224)``."""
    if isinstance(size, int):
        return size
    values = [int(v) for v in size]
    return values[-1]
