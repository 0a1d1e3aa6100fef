"""Layer-wise learning-rate decay: one parameter group per backbone layer, its lr decaying from the top layer down.

With ``layer_decay`` d and ``backbone_lr_factor`` f, the head trains at the optimizer's lr and backbone layer i
counted from the top (the last in forward order is 0) at lr × f × d**i, in a group named ``backbone.<layer>``.
A timm model's layers are timm's fine parameter groups (stem, then each block: what timm's
``param_groups_layer_decay`` decays over, so on the backbone alone the scales are timm's); any other backbone's are
the stages of ``freeze: N`` (:func:`~lit_transfer.models.freezing.stage_parameters`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lit_transfer.models.freezing import stage_parameters
from lit_transfer.models.timm_source import is_timm_model

OTHER = "other"  # the layer of parameters outside every stage (a user module's own top-level parameters)


def check_layer_decay(layer_decay: float | None) -> None:
    """Refuse a ``layer_decay`` outside (0, 1] (NaN included) before anything is built."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(
            f"model.init_args.layer_decay={layer_decay}: use a value in (0, 1], e.g. 0.75 (each backbone stage "
            "trains at that fraction of the lr of the stage above it), or null for one backbone parameter group"
        )


def backbone_layers(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """The backbone's layers in forward order with their parameter names (relative to the backbone), for lr decay.

    A timm model's are :func:`timm_layers`; any other backbone's are its ``freeze: N`` stages (``conv1``, ``bn1``,
    ``layer1`` … ``layer4`` for a torchvision ResNet; a user module's children). Parameters in none of them form a
    first layer ``other``, so every parameter is in exactly one layer.
    """
    layers = timm_layers(backbone) if is_timm_model(backbone) else stage_parameters(backbone)
    every = [n for n, _ in backbone.named_parameters()]
    listed = {n for _, names in layers for n in names}
    rest = [n for n in every if n not in listed]
    if rest:
        used = {name for name, _ in layers}
        name = OTHER
        while name in used:
            name += "_"
        layers = [(name, rest), *layers]
    return layers


def timm_layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """A timm model's layers in forward order from its fine grouping (``group_matcher(coarse=False)``).

    A layer is named after the smallest modules holding its parameters and no other layer's, joined with ``+``
    where there are several: ``conv1+bn1``, ``layer1.0``, ``blocks.11+norm``, ``stages.1.downsample+stages.1.blocks.0``.
    """
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=False))  # type: ignore[operator]
    ordered = [list(names) for _, names in sorted(groups.items())]
    return list(zip(unit_names(ordered), ordered, strict=True))


def unit_names(groups: list[list[str]]) -> list[str]:
    """A name per group of parameter names: the shortest module prefixes holding only that group's parameters."""
    owners: dict[str, set[int]] = {}
    for index, names in enumerate(groups):
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                owners.setdefault(".".join(parts[:depth]), set()).add(index)
    out = []
    for index, names in enumerate(groups):
        units: list[str] = []
        for name in names:
            parts = name.split(".")
            prefixes = (".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
            unit = next(p for p in prefixes if owners[p] == {index})  # the full name is always the group's own
            if unit not in units:
                units.append(unit)
        out.append("+".join(units))
    return out


def layer_decay_groups(
    backbone: nn.Module, lr: float, layer_decay: float, trains: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """The backbone's parameter groups from the top layer down: layer i from the top at ``lr`` × ``layer_decay``**i.

    ``lr`` is the top layer's (the head's × ``backbone_lr_factor``). Only parameters for which ``trains(name)``
    holds are in a group; a layer without any is left out, and the layers below it keep their depth.
    """
    params = dict(backbone.named_parameters(remove_duplicate=False))
    seen: set[int] = set()
    groups = []
    for depth, (layer, names) in enumerate(reversed(backbone_layers(backbone))):
        members = []
        for name in names:
            param = params[name]
            if id(param) not in seen and trains(name):
                seen.add(id(param))
                members.append(param)
        if members:
            groups.append({"params": members, "lr": lr * layer_decay**depth, "name": f"backbone.{layer}"})
    return groups
