"""Backbone registry: a name and weights become a feature extractor ``(B, 3, H, W) -> (B, D)``.

Every torchvision classification model is available under its builder name (``resnet50``, ``vgg16``, …; also
``torchvision/resnet50``); its final classification layer is replaced by ``nn.Identity`` so the head sees the
penultimate features. Every timm model is available as ``timm/<architecture>[.<pretrained tag>]`` or
``hf-hub:<org>/<repo>`` (:mod:`~lit_transfer.models.timm_source`). Extra backbones are registered with
:func:`register_backbone`. Any of them loads a local weights file (``.pth``, ``.pt``, ``.safetensors``, a
lit_transfer ``.ckpt``), mapped with :mod:`~lit_transfer.models.weights_map` when another implementation saved it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_transfer.core.checkpoints import load_checkpoint
from lit_transfer.models.timm_source import TIMM_PREFIX, build_timm, is_timm_name
from lit_transfer.models.weights_map import WeightsMapSpec, check_weights_map, map_weights

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".safetensors")
TORCHVISION_PREFIX = "torchvision/"
PRETRAINED = "pretrained"  # a timm backbone's ``weights``: its default (or tagged) pretrained weights

# Auxiliary classifiers only cost time and memory in a feature extractor. torchvision refuses aux_logits=False with
# weights (they are part of the checkpoint), so they are built, loaded and then dropped: model attribute → modules.
_AUX_HEADS: dict[str, tuple[str, ...]] = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


@dataclass
class Backbone:
    """A feature extractor and what the head and the input pipeline need to know about it."""

    module: nn.Module
    feature_dim: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    removed_prefix: str | tuple[str, ...] | None = None  # state-dict prefix(es) of the removed classification layer


BackboneBuilder = Callable[[], Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a builder ``() -> Backbone`` (random init) under ``name``.

    A name is registered once: a name already registered, or a torchvision model's name (which the registered
    builder would silently replace), is refused with a ``ValueError``.
    """
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered ({_REGISTRY[name].__qualname__}); use another name")
    if name in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"backbone name {name!r} would shadow the torchvision model {name!r}; register it under another name"
        )

    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:  # registered between the decorator's creation and its application
            raise ValueError(f"backbone {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    """Every torchvision and registered backbone name :func:`build_backbone` accepts (timm's: ``timm/…``)."""
    return sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(_REGISTRY))


class SmallCNN(nn.Sequential):
    """The 32 px network of the torch.nn tutorial (seed 003): three 5x5 conv + max-pool blocks, 1024 → 64."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),  # identity at 32 px; lets other sizes reach the 1024 features too
            nn.Flatten(),
            nn.Linear(1024, 64),
        )


@register_backbone("smallcnn")
def _smallcnn() -> Backbone:
    return Backbone(SmallCNN(), 64)


def _strip_classifier(model: nn.Module) -> tuple[int, str]:
    """Replace the model's last ``nn.Linear`` with identity; return its input size and state-dict prefix."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no final linear layer to replace")
    name, linear = last
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return linear.in_features, name


def _squeezenet_features(model: nn.Module) -> tuple[int, str]:
    # SqueezeNet classifies with a 1x1 convolution; keep the pooling, drop the class projection.
    model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return 512, "classifier"


def resolve_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights enum member ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, …) of backbone ``name``."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise ValueError(f"backbone {name!r} has no torchvision weights; use weights: null or a local file") from err
    valid = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
    if weights == PRETRAINED:
        raise ValueError(
            f"weights {PRETRAINED!r} are timm's; the torchvision backbone {name!r} takes DEFAULT or one of {valid} "
            f"(or use timm's model: backbone {TIMM_PREFIX}{name})"
        )
    prefix, _, key = weights.rpartition(".")
    if prefix and prefix.split(".")[-1] != enum.__name__:  # ResNet18_Weights.X given for resnet50: not silently
        raise ValueError(f"weights {weights!r} are not {enum.__name__} weights of backbone {name!r}; valid: {valid}")
    if key not in valid:
        raise ValueError(
            f"unknown weights {weights!r} for backbone {name!r}; valid: {valid}, null, or a path to a weights file"
        )
    return enum.DEFAULT if key == "DEFAULT" else enum[key]


def is_weights_file(weights: str) -> bool:
    """Whether a ``weights`` value names a local file rather than a torchvision weights enum."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(WEIGHT_FILE_SUFFIXES)


def build_backbone(name: str, weights: str | None = None, weights_map: WeightsMapSpec = None) -> Backbone:
    """Build backbone ``name`` with ``weights``: ``None`` (random), named weights, or a local file.

    Named weights are a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``) for a torchvision backbone and
    ``pretrained`` for a timm one (``timm/…``, ``hf-hub:…``). ``weights_map`` says how a local file's tensor names
    map onto the backbone's (see :mod:`lit_transfer.models.weights_map`).
    """
    file_weights = weights is not None and is_weights_file(weights)
    check_weights_map(weights_map)
    if weights_map is not None and not file_weights:
        raise ValueError(
            f"model.weights_map={weights_map!r} maps a local weights file, but model.weights is {weights!r}; give "
            "model.weights: path/to/file.pth, or drop weights_map"
        )
    if is_timm_name(name):
        backbone = _timm_backbone(name, weights, file_weights)
    else:
        backbone = _torchvision_or_registered(name.removeprefix(TORCHVISION_PREFIX), weights, file_weights)
        name = name.removeprefix(TORCHVISION_PREFIX)
    if file_weights:
        load_weights_file(backbone, name, weights, weights_map)  # type: ignore[arg-type]
    return backbone


def _timm_backbone(name: str, weights: str | None, file_weights: bool) -> Backbone:
    if weights is not None and not file_weights and weights != PRETRAINED:
        raise ValueError(
            f"unknown weights {weights!r} for timm backbone {name!r}: use {PRETRAINED} (timm's weights; pick a tag "
            f"with {name.partition('.')[0]}.<tag>), null (random init) or a path to a weights file"
        )
    built = build_timm(name, pretrained=weights == PRETRAINED)
    return Backbone(built.module, built.feature_dim, built.mean, built.std, built.classifier or None)


def _torchvision_or_registered(name: str, weights: str | None, file_weights: bool) -> Backbone:
    torchvision_names = set(torchvision.models.list_models(module=torchvision.models))
    if name not in _REGISTRY and name not in torchvision_names:
        close = difflib.get_close_matches(name, list_backbones(), n=5, cutoff=0.5)
        hint = f"did you mean {close}?" if close else "see lit_transfer.models.list_backbones()"
        raise ValueError(f"unknown backbone {name!r}; {hint}, or a timm model as {TIMM_PREFIX}<name>")
    if name in _REGISTRY:
        if weights is not None and not file_weights:
            raise ValueError(f"backbone {name!r} has no named weights; use weights: null or a local file")
        return _REGISTRY[name]()
    enum = resolve_weights(name, weights) if weights is not None and not file_weights else None
    model = _build_torchvision(name, enum)
    dim, prefix = _squeezenet_features(model) if name.startswith("squeezenet") else _strip_classifier(model)
    backbone = Backbone(model, dim, removed_prefix=prefix)
    if enum is not None:
        preset = enum.transforms()
        backbone.mean, backbone.std = tuple(preset.mean), tuple(preset.std)
    return backbone


def _build_torchvision(name: str, enum: torchvision.models.WeightsEnum | None) -> nn.Module:
    """``torchvision.models.get_model`` without auxiliary heads; a failed weights download says what to do."""
    kwargs: dict[str, Any] = {"aux_logits": False} if name in _AUX_HEADS and enum is None else {}
    try:
        model = torchvision.models.get_model(name, weights=enum, **kwargs)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated download a RuntimeError
        if enum is None:
            raise
        raise ValueError(weights_download_error(name, enum, err)) from err
    if name in _AUX_HEADS and enum is not None:
        model.aux_logits = False
        for attr in _AUX_HEADS[name]:
            setattr(model, attr, None)
    return model


def weights_download_error(name: str, enum: torchvision.models.WeightsEnum, err: BaseException) -> str:
    """What to do when torchvision cannot fetch ``enum``: where the file comes from and where it would go."""
    url = enum.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot download the {enum} weights of backbone {name!r} ({reason}). Download {url} on a machine with "
        f"network access and put it at {target} (torch.hub's cache, $TORCH_HOME), or set "
        "model.init_args.weights to null (random init) or to a local weights file"
    )


def _find_state_dict(obj: Any, path: str, name: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of a loaded weights file, whatever format saved it."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        hparams = obj.get("hyper_parameters")
        saved = hparams.get("backbone") if isinstance(hparams, dict) else None
        key = "model.backbone"
        if isinstance(saved, dict):  # a user's own module: {class_path, init_args, input_size}
            saved, key = saved.get("class_path") or saved.get("name"), "model.backbone.class_path"
        if saved is not None and str(saved).removeprefix(TORCHVISION_PREFIX) != name:
            raise ValueError(f"weights file {path!r} holds a {saved!r} backbone, not {name!r}; set {key}: {saved}")
        state = {k[len("backbone.") :]: v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
        if not state:
            raise ValueError(f"checkpoint {path!r} has no 'backbone.' tensors; is it a lit_transfer checkpoint?")
        return state
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):  # torchvision references format
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"weights file {path!r} is not a state dict, a torchvision checkpoint or a lit_transfer checkpoint"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_weights_file(path: str) -> Any:
    """What a local weights file holds: ``.safetensors`` through safetensors, anything else ``weights_only``."""
    if not path.lower().endswith(".safetensors"):
        return load_checkpoint(path, what="weights file")  # missing: a FileNotFoundError, a bad one: a ValueError
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path!r} does not exist (or is not a file); check model.weights")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"weights file {path!r} is not a readable safetensors file ({err}); write it again") from err


def load_weights_file(backbone: Backbone, name: str, path: str, weights_map: WeightsMapSpec = None) -> str:
    """Load a local weights file into ``backbone`` (safely: pickled code never runs); report it in one line.

    The file's classifier is dropped; ``weights_map`` maps the names of a file saved by another implementation.
    Returns (and prints) the line saying what was loaded, from where, how many tensors and what was dropped.
    """
    obj = read_weights_file(path)
    state = _find_state_dict(obj, path, name)
    if weights_map == "positional" and path.lower().endswith(".safetensors"):
        raise ValueError(
            f"weights file {path!r}: a safetensors file does not keep the order its tensors were saved in, so "
            'model.weights_map: positional cannot pair them; map them by name ({"strip_prefix": …, "rename": …})'
        )
    saved = obj.get("lit_transfer") if isinstance(obj, dict) else None
    if isinstance(saved, dict) and saved.get("mean") and saved.get("std"):
        # a lit_transfer checkpoint's backbone was trained on inputs normalized its way (e.g. normalize: dataset)
        backbone.mean, backbone.std = tuple(saved["mean"]), tuple(saved["std"])
    prefixes = backbone.removed_prefix or ()
    mapped = map_weights(
        state,
        backbone.module.state_dict(),
        weights_map,
        feature_dim=backbone.feature_dim,
        classifier_prefixes=(prefixes,) if isinstance(prefixes, str) else prefixes,
        path=path,
        name=name,
    )
    try:
        result = backbone.module.load_state_dict(mapped.state, strict=False)
    except RuntimeError as err:  # tensor shape mismatches raise even with strict=False; name the file
        raise ValueError(f"weights file {path!r} does not fit backbone {name!r}: {err}") from err
    missing = [k for k in result.missing_keys if not (mapped.strict and k.endswith("num_batches_tracked"))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights file {path!r} does not fit backbone {name!r}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
            + ("" if weights_map is not None else "; a file saved by another implementation needs model.weights_map")
        )
    count = sum(v.numel() for v in mapped.state.values() if v.is_floating_point())
    dropped = "dropped nothing"
    if mapped.dropped:
        weight = next((v for v in mapped.dropped.values() if v.dim() >= 2), None)
        size = f" ({weight.shape[0]} classes)" if weight is not None else ""
        dropped = f"dropped the file's classifier {_summarize(list(mapped.dropped))}{size}"
    report = (
        f"backbone {name}: loaded {len(mapped.state)} tensors ({count / 1e6:.2f} M values) from {path} "
        f"({mapped.how}); {dropped}"
    )
    rank_zero_info(report)
    return report


def _summarize(keys: list[str]) -> str:
    return str(keys) if len(keys) <= 4 else f"{keys[:4]} and {len(keys) - 4} more"
