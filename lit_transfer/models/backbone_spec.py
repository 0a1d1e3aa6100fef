"""``model.backbone`` as one grouped value: a backbone name, or a user's own ``nn.Module`` given by class path.

``model.backbone`` is either a name that :func:`~lit_transfer.models.backbones.build_backbone` accepts
(``resnet50``, ``timm/convnext_tiny``, ``smallcnn``), with the weights in the flat ``model.weights`` /
``model.weights_map``, or a mapping of :class:`BackboneSpec`'s fields::

    backbone: {name: resnet50, weights: DEFAULT}
    backbone:
      class_path: my_pkg.MyNet       # any importable nn.Module subclass
      init_args: {width: 16}
      weights: path/to/mynet.pth     # optional: a local weights file (and weights_map)

:func:`as_spec` merges both spellings into one :class:`BackboneSpec`; :func:`backbone_hparams` turns it back into
the plain values a checkpoint stores (a name stays a plain string; a class path a plain dict; the weights always go
to the flat ``weights``/``weights_map``), and :func:`build_from_spec` builds it. A user module becomes a feature
extractor ``(B, 3, H, W) -> (B, D)``:

- with timm-style ``forward_features`` and ``num_features``, its features are ``forward_head(x, pre_logits=True)``
  of ``forward_features(x)`` when it has ``forward_head``, else the global average of a 4-D ``forward_features``
  output. That instance's ``forward`` is replaced by this (nothing else is wrapped);
- otherwise its own ``forward(x)`` must return ``(B, D)``, and the module is used as it is.

Either way ``D`` is found by one forward of a ``(1, 3, input_size, input_size)`` zero batch (in eval mode, without
gradients; the module's mode is restored), and any other output shape is refused saying what came back. The
module is never wrapped in another one, so its parameter names (``backbone.<its names>`` in checkpoints), its
children (the stages of ``freeze: N`` and unfreeze schedules) and its own ``state_dict`` files stay its own.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import yaml
from jsonargparse.typing import register_type
from torch import nn

from lit_transfer.models.backbones import Backbone, build_backbone, is_weights_file, load_weights_file
from lit_transfer.models.weights_map import WeightsMapSpec, check_weights_map

DEFAULT_INPUT_SIZE = 224
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class BackboneSpec:
    """What belongs to the backbone: a name or a user module's class path and init args, its weights.

    Attributes:
        name: any name :func:`~lit_transfer.models.backbones.build_backbone` accepts (``resnet50``,
            ``timm/<arch>[.<tag>]``, ``hf-hub:<org>/<repo>``, a registered one).
        class_path: import path of a user's own ``nn.Module`` subclass (``my_pkg.MyNet``); exactly one of ``name``
            and ``class_path`` is given.
        init_args: keyword arguments of the class (plain values: they are stored in checkpoints).
        weights: as ``model.weights``: ``null``, named weights of a ``name``, or a local weights file.
        weights_map: as ``model.weights_map``, for a local weights file.
        input_size: side of the one zero batch that finds a user module's feature size (``class_path`` only).
    """

    name: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weights_map: WeightsMapSpec = None
    input_size: int = DEFAULT_INPUT_SIZE

    def __post_init__(self) -> None:
        """Refuse a spec that names no backbone or two, or holds values of the wrong kind."""
        if (self.name is None) == (self.class_path is None):
            raise ValueError(
                f"model.backbone: give exactly one of name (a backbone name such as resnet50) and class_path (your "
                f"own nn.Module, e.g. my_pkg.MyNet); got name={self.name!r}, class_path={self.class_path!r}"
            )
        for key in ("name", "class_path", "weights"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"model.backbone.{key}={value!r}: give a non-empty string")
        if not isinstance(self.init_args, Mapping) or not all(isinstance(k, str) for k in self.init_args):
            raise ValueError(f"model.backbone.init_args={self.init_args!r}: give a mapping of argument names to values")
        if not _is_plain(self.init_args):
            raise ValueError(
                f"model.backbone.init_args={self.init_args!r}: use plain values (numbers, strings, booleans, null, "
                "lists and mappings of them), which checkpoints can store"
            )
        self.init_args = dict(self.init_args)
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 1:
            raise ValueError(f"model.backbone.input_size={self.input_size!r}: give a positive number of pixels")
        if self.name is not None and (self.init_args or self.input_size != DEFAULT_INPUT_SIZE):
            raise ValueError(
                f"model.backbone: init_args and input_size belong to a class_path backbone, not to name={self.name!r}"
            )
        check_weights_map(self.weights_map)


FIELDS = tuple(f.name for f in fields(BackboneSpec))


def _is_plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def spec_from_value(value: BackboneSpec | Mapping[str, Any]) -> BackboneSpec:
    """A :class:`BackboneSpec` from a mapping of its fields (a config's, a checkpoint's); unknown keys refused."""
    if isinstance(value, BackboneSpec):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"model.backbone: expected a backbone name or a mapping of {list(FIELDS)}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in FIELDS)
    if unknown:
        raise ValueError(f"model.backbone: unknown keys {unknown}; the keys are {list(FIELDS)}")
    return BackboneSpec(**{str(k): v for k, v in value.items()})


def spec_to_dict(spec: BackboneSpec) -> dict[str, Any]:
    """The fields of ``spec`` that differ from their defaults, as plain values (how a config file writes it)."""
    out: dict[str, Any] = {}
    for f in fields(BackboneSpec):
        value = getattr(spec, f.name)
        default = f.default_factory() if callable(f.default_factory) else f.default
        if value != default:
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


def _looks_like_mapping(text: str) -> Mapping[str, Any] | None:
    """A ``{…}`` string that parses as a mapping (a spec mistyped on the command line), else ``None``."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, Mapping) else None


def as_spec(
    backbone: str | BackboneSpec | Mapping[str, Any],
    weights: str | None = None,
    weights_map: WeightsMapSpec = None,
) -> BackboneSpec:
    """Merge ``model.backbone`` (a name or a spec) with the flat ``model.weights`` and ``model.weights_map``.

    A value given both nested and flat must be the same; two different ones are a ``ValueError`` naming both keys.
    """
    if isinstance(backbone, str):
        mapping = _looks_like_mapping(backbone)  # e.g. {"nam": …}: jsonargparse kept it as a name
        if mapping is None:
            return BackboneSpec(name=backbone, weights=weights, weights_map=weights_map)
        backbone = mapping
    spec = spec_from_value(backbone)
    merged: dict[str, Any] = {}
    for key, flat in (("weights", weights), ("weights_map", weights_map)):
        nested = getattr(spec, key)
        if nested is not None and flat is not None and nested != flat:
            raise ValueError(
                f"model.backbone.{key}={nested!r} and model.{key}={flat!r} are both given: give the {key} once, "
                f"either inside model.backbone or as model.{key}"
            )
        merged[key] = nested if nested is not None else flat
    return BackboneSpec(**{**{f: getattr(spec, f) for f in FIELDS}, **merged})


def backbone_hparams(spec: BackboneSpec) -> tuple[str | dict[str, Any], str | None, WeightsMapSpec]:
    """The plain ``(backbone, weights, weights_map)`` hyperparameters a checkpoint stores for ``spec``.

    A name is stored as the plain string, a class path as ``{class_path, init_args, input_size}``; the weights go
    to the flat ``weights``/``weights_map`` either way, so every reader of them keeps working.
    """
    weights_map = dict(spec.weights_map) if isinstance(spec.weights_map, Mapping) else spec.weights_map
    if spec.name is not None:
        return spec.name, spec.weights, weights_map
    stored = {"class_path": spec.class_path, "init_args": dict(spec.init_args), "input_size": spec.input_size}
    return stored, spec.weights, weights_map


def backbone_identity(backbone: str | BackboneSpec | Mapping[str, Any]) -> str:
    """A short display name for logs and reports: ``resnet50``, ``timm/convnext_tiny``, ``my_pkg.MyNet``."""
    if isinstance(backbone, str):
        return backbone
    if isinstance(backbone, BackboneSpec):
        return str(backbone.name or backbone.class_path)
    return str(backbone.get("name") or backbone.get("class_path") or "backbone")


# jsonargparse parses ``str | BackboneSpec`` through this registration: a mapping becomes a spec, anything else is
# left to ``str``. (As a plain dataclass its ``class_path``/``init_args`` fields would be taken for jsonargparse's
# own subclass syntax.) A spec is written back to configs as the mapping of its non-default fields.
register_type(BackboneSpec, spec_to_dict, spec_from_value, (ValueError, TypeError))


# --- building ---------------------------------------------------------------------------------------------------


def build_from_spec(spec: BackboneSpec) -> Backbone:
    """Build the backbone of ``spec``: a named one through ``build_backbone``, a user module by its class path."""
    if spec.name is not None:
        return build_backbone(spec.name, spec.weights, spec.weights_map)
    return build_own_backbone(spec)


def import_class(class_path: str) -> Any:
    """The object at ``class_path`` (``package.module.Name``, nested names allowed); a ``ValueError`` if none."""
    parts = class_path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not module_name.startswith(err.name):
                raise ValueError(f"backbone class_path {class_path!r}: importing {module_name} failed: {err}") from err
            continue
        except Exception as err:  # the module exists but fails to import: say why
            raise ValueError(f"backbone class_path {class_path!r}: importing {module_name} failed: {err}") from err
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ValueError(
        f"backbone class_path {class_path!r} is not importable: give the full import path of your nn.Module "
        "subclass (package.module.ClassName) and make sure its package is on the Python path"
    )


def build_own_backbone(spec: BackboneSpec) -> Backbone:
    """A user's ``nn.Module`` (``spec.class_path`` with ``spec.init_args``) as a ``(B, 3, H, W) -> (B, D)`` backbone."""
    path = str(spec.class_path)
    if spec.weights is not None and not is_weights_file(spec.weights):
        raise ValueError(
            f"backbone {path}: weights={spec.weights!r} names no file; a class_path backbone takes weights: null "
            "(its own initialization) or a path to a weights file (.pth, .pt, .safetensors, a lit_transfer .ckpt)"
        )
    if spec.weights_map is not None and spec.weights is None:
        raise ValueError(
            f"model.weights_map={spec.weights_map!r} maps a local weights file, but backbone {path} has no weights; "
            "give weights: path/to/file.pth, or drop weights_map"
        )
    cls = import_class(path)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(
            f"backbone class_path {path!r} is {_describe(cls)}, not an nn.Module subclass: give a torch.nn.Module "
            "subclass whose forward takes (B, 3, H, W) images"
        )
    try:
        module = cls(**spec.init_args)
    except TypeError as err:
        raise ValueError(f"cannot build backbone {path} with init_args {spec.init_args}: {err}") from err
    if _is_timm_style(module):
        module.forward = functools.partial(_pooled_features, module)
    dim = probe_feature_dim(module, path, spec.input_size)
    backbone = Backbone(module, dim)
    if spec.weights is not None:
        load_weights_file(backbone, path, spec.weights, spec.weights_map)
    return backbone


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def _is_timm_style(module: nn.Module) -> bool:
    """Whether a module has timm's feature interface: ``forward_features`` and ``num_features``."""
    return callable(getattr(module, "forward_features", None)) and hasattr(module, "num_features")


def _pooled_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm-style module's pooled features: its ``forward_head(pre_logits=True)``, or the average of a 4-D map."""
    out = module.forward_features(x)  # type: ignore[operator]
    head = getattr(module, "forward_head", None)
    if callable(head):
        return head(out, pre_logits=True)
    return out.mean(dim=(2, 3)) if isinstance(out, torch.Tensor) and out.dim() == 4 else out


def probe_feature_dim(module: nn.Module, name: str, input_size: int = DEFAULT_INPUT_SIZE) -> int:
    """The feature size ``D`` of ``module``: one forward of a ``(1, 3, S, S)`` zero batch must return ``(1, D)``.

    Runs in eval mode without gradients and restores the module's training mode; any other output is refused,
    saying what shape came back and what is expected.
    """
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    batch = torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype)
    shape = f"(1, 3, {input_size}, {input_size})"
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(batch)
    except Exception as err:
        raise ValueError(
            f"backbone {name}: its forward failed on a {shape} zero batch ({type(err).__name__}: {err}); if it "
            "needs another input size, set model.backbone.input_size"
        ) from err
    finally:
        module.train(was_training)
    expected = (
        "expected (batch, features), i.e. (1, D): end the module in pooling and flattening (e.g. "
        "nn.AdaptiveAvgPool2d(1) and nn.Flatten()), or give it timm-style forward_features and num_features"
    )
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"backbone {name}: a {shape} batch returned a {type(out).__name__}, not a tensor; {expected}")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        raise ValueError(f"backbone {name}: a {shape} batch returned shape {tuple(out.shape)}; {expected}")
    return int(out.shape[1])
