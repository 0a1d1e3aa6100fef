"""The link from the model's backbone and weights to the data module's preprocessing, made before instantiation.

The data side never imports the model: the preprocessing is a pure function of the config (backbone name, weights,
``data.image_size``, ``model.mean``/``std``, see :func:`lit_transfer.models.preprocessing.resolve_preprocessing`),
resolved here and written into ``data.init_args.preprocessing``. The run's ``config.yaml`` then records what was
used, and running that file again reproduces it.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace

from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.models.backbone_spec import BackboneSpec
from lit_transfer.models.backbones import is_weights_file
from lit_transfer.models.preprocessing import resolve_preprocessing, size_mismatch_warning
from lit_transfer.models.timm_source import HF_HUB_PREFIX, is_timm_name, timm_model_name


def _get(section: Any, key: str) -> Any:
    if isinstance(section, Namespace | dict):
        return section.get(key)
    return None


def backbone_and_weights(model_args: Any) -> tuple[str | None, str | None]:
    """The backbone name and weights of a model config (``None`` for a user's own module given by class_path)."""
    backbone = _get(model_args, "backbone")
    weights = _get(model_args, "weights")
    if isinstance(backbone, BackboneSpec):  # the grouped form: {name: …, weights: …} or {class_path: …}
        weights = backbone.weights or weights
        backbone = backbone.name
    elif isinstance(backbone, Namespace | dict):
        weights = _get(backbone, "weights") or weights
        backbone = _get(backbone, "name")
    return (str(backbone) if backbone else None), (str(weights) if weights is not None else None)


def link_preprocessing(config: Any) -> list[str]:
    """Fill ``data.init_args.preprocessing`` of one subcommand's ``config`` from its model; return warnings.

    Nothing happens when the data module takes no ``preprocessing`` (not a lit_transfer one), when the config
    gives one, or when the backbone is unknown (the model's own construction reports that, naming close matches).
    """
    data = _get(_get(config, "data"), "init_args")
    model = _get(_get(config, "model"), "init_args")
    if not isinstance(data, Namespace) or "preprocessing" not in data or model is None:
        return []
    if data.get("preprocessing") is not None:
        return []
    backbone, weights = backbone_and_weights(model)
    image_size = data.get("image_size")
    mean, std = model.get("mean"), model.get("std")
    if backbone is None:  # a user's own module: lit_transfer's defaults, at the given size
        pre = resolve_preprocessing("smallcnn", None, image_size, mean, std)
        data["preprocessing"] = pre.to_dict()
        data["image_size"] = pre.input_size
        return []
    try:
        pre = resolve_preprocessing(backbone, weights, image_size, mean, std)
        own = resolve_preprocessing(backbone, weights) if image_size is not None else pre
    except ValueError:
        return []
    data["preprocessing"] = pre.to_dict()
    data["image_size"] = pre.input_size
    return _warnings(backbone, weights, pre, own)


def _warnings(backbone: str, weights: str | None, pre: Preprocessing, own: Preprocessing) -> list[str]:
    if weights is None:
        return []  # random init: no size the weights were trained at
    if timm_model_name(backbone).startswith(HF_HUB_PREFIX):
        return [
            f"the preprocessing of {backbone} is on the Hugging Face Hub and is not read before training: the data "
            f"uses lit_transfer's defaults (resize {pre.resize_size}, center crop {pre.input_size}, "
            f"{pre.interpolation}); set data.init_args.preprocessing to the model card's values"
        ]
    if is_weights_file(weights) and not is_timm_name(backbone):
        return []  # a torchvision name with a file: no metadata to compare with
    warning = size_mismatch_warning(own, pre.input_size)
    return [warning] if warning else []
