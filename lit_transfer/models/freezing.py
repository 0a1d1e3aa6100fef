"""Freeze policies: which backbone parameters train and when they thaw, frozen BatchNorm in eval mode, audit table."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lit_transfer.models.timm_source import is_timm_model, timm_stages

# int first: jsonargparse tries a Union in order, and on the command line "2" would otherwise stay a string
FreezeSpec = int | str | list[str]


def backbone_stages(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level stages of a (torchvision or registered) backbone in forward order: children that hold parameters.

    A child called ``features`` (VGG, EfficientNet, MobileNet, DenseNet, ConvNeXt) is expanded into its own children,
    so "the first N stages" is as fine-grained there as ResNet's ``conv1 … layer4``. Freezing goes through
    :func:`stage_parameters`, which also knows timm models' stages.
    """
    stages: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            stages += [(f"features.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        elif any(True for _ in child.parameters()):
            stages.append((name, child))
    return stages


def stage_parameters(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """The backbone's stages in forward order with their parameter names (relative to the backbone).

    A timm model's stages are timm's own coarse parameter groups (its ``group_matcher``: stem, then each stage or
    block, as layer-wise learning-rate decay uses them); any other backbone's are :func:`backbone_stages`.
    """
    if is_timm_model(backbone):
        return timm_stages(backbone)
    return [(name, [f"{name}.{p}" for p, _ in module.named_parameters()]) for name, module in backbone_stages(backbone)]


def frozen_parameter_names(backbone: nn.Module, freeze: FreezeSpec) -> set[str]:
    """Names (relative to the backbone) of the parameters that ``freeze`` freezes.

    ``freeze`` is ``"none"`` (fine-tune everything), ``"backbone"`` (feature extraction), an integer N (the first N
    stages of :func:`stage_parameters`) or a list of ``fnmatch`` patterns or name prefixes (``"layer1"``,
    ``"features.*"``).
    """
    names = [n for n, _ in backbone.named_parameters()]
    if freeze == "none":
        return set()
    if freeze == "backbone":
        return set(names)
    if isinstance(freeze, int) and not isinstance(freeze, bool):
        stages = stage_parameters(backbone)
        if not 0 <= freeze <= len(stages):
            raise ValueError(f"freeze={freeze}: this backbone has {len(stages)} stages ({[s for s, _ in stages]})")
        return {n for _, params in stages[:freeze] for n in params}
    if isinstance(freeze, list | tuple):
        frozen = set()
        for pattern in freeze:
            hits = {n for n in names if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern.rstrip(".") + ".")}
            if not hits:
                raise ValueError(
                    f"freeze pattern {pattern!r} matches no backbone parameter; stages are "
                    f"{[s for s, _ in stage_parameters(backbone)]}"
                )
            frozen |= hits
        return frozen
    raise ValueError(f"freeze={freeze!r}: use 'none', 'backbone', a number of stages, or a list of name patterns")


def apply_freeze(backbone: nn.Module, frozen: set[str]) -> None:
    """Set ``requires_grad`` from the frozen set and put fully frozen BatchNorm layers in eval mode."""
    for name, param in backbone.named_parameters():
        param.requires_grad_(name not in frozen)
    set_frozen_bn_eval(backbone, frozen)


def frozen_batchnorms(backbone: nn.Module, frozen: set[str]) -> list[_BatchNorm]:
    """BatchNorm layers whose affine parameters are all frozen (their running statistics must not move either)."""
    out = []
    for name, module in backbone.named_modules():
        if isinstance(module, _BatchNorm):
            params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if params and all(p in frozen for p in params):
                out.append(module)
    return out


def set_frozen_bn_eval(backbone: nn.Module, frozen: set[str]) -> None:
    """Keep frozen BatchNorm layers in eval mode, whatever ``.train()`` did to the rest."""
    for bn in frozen_batchnorms(backbone, frozen):
        bn.eval()


def parameter_table(backbone: nn.Module, head: nn.Module, frozen: set[str] | None = None) -> list[tuple[str, int, int]]:
    """``(stage, trainable, frozen)`` parameter counts per backbone stage, then the head and the total.

    A parameter is frozen when it does not require gradients or is named (relative to the backbone) in ``frozen``.
    """
    names = {id(p): n for n, p in backbone.named_parameters()}
    by_name = dict(backbone.named_parameters())
    frozen = frozen or set()

    def trains(p: nn.Parameter) -> bool:
        return p.requires_grad and names.get(id(p)) not in frozen

    rows = []
    seen: set[int] = set()
    groups = [(stage, [by_name[n] for n in params]) for stage, params in stage_parameters(backbone)]
    for stage, members in [*groups, ("head", list(head.parameters()))]:
        params = [p for p in members if id(p) not in seen]
        seen |= {id(p) for p in params}
        trainable = sum(p.numel() for p in params if trains(p))
        rows.append((stage, trainable, sum(p.numel() for p in params) - trainable))
    rest = [p for p in backbone.parameters() if id(p) not in seen]
    if rest:
        trainable = sum(p.numel() for p in rest if trains(p))
        rows.append(("(other)", trainable, sum(p.numel() for p in rest) - trainable))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def format_parameter_table(rows: Sequence[tuple[str, int, int]]) -> str:
    """The parameter table as aligned text."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'stage':<{width}}  {'trainable':>13}  {'frozen':>13}"]
    lines += [f"{name:<{width}}  {t:>13,}  {f:>13,}" for name, t, f in rows]
    return "\n".join(lines)


def frozen_at_epoch(backbone: nn.Module, initial_frozen: set[str], milestones: Sequence[int], epoch: int) -> set[str]:
    """The backbone parameters frozen during ``epoch`` when the ``initial_frozen`` ones thaw at ``milestones``.

    Before the first milestone everything in ``initial_frozen`` stays frozen, from the last one on nothing is; in
    between, the frozen stages are split into one chunk per milestone and the top chunk thaws first.
    """
    passed = sum(1 for m in milestones if m <= epoch)
    if passed == 0:
        return set(initial_frozen)
    if passed >= len(milestones):
        return set()
    frozen_stages = [set(params) for _, params in stage_parameters(backbone) if initial_frozen.intersection(params)]
    count = math.ceil(len(frozen_stages) * passed / len(milestones))  # never more than all stages
    thawed = set().union(*frozen_stages[len(frozen_stages) - count :])
    return {n for n in initial_frozen if n not in thawed}
