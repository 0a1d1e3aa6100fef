"""``python -m lit_transfer backbones``: list the backbone names, or show one's size, preprocessing and stages.

``backbones list [PATTERN]`` lists torchvision builder names (with their weights names), registered names and timm
names with their pretrained tags (``timm/<architecture>.<tag>``), filtered by an fnmatch ``PATTERN``.
``backbones show NAME [--weights W] [--image_size N] [--json]`` builds the backbone on the ``meta`` device (no
weights downloaded, no memory used) and prints its feature size, parameter count, the preprocessing its weights
were trained with (:func:`lit_transfer.models.preprocessing.resolve_preprocessing`) and the stages that
``model.freeze: N`` and the unfreeze schedule act on.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json as json_module
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torchvision

from lit_transfer.core.errors import ConfigError
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.models.backbones import TORCHVISION_PREFIX, build_backbone, is_weights_file, list_backbones
from lit_transfer.models.freezing import stage_parameters
from lit_transfer.models.preprocessing import resolve_preprocessing, size_mismatch_warning
from lit_transfer.models.timm_source import TIMM_PREFIX, is_timm_name

PROG = "lit_transfer backbones"
USAGE_EPILOG = (
    "commands:\n"
    "  list [PATTERN]                  backbone names matching an fnmatch PATTERN (e.g. 'resnet*', 'timm/vit_*')\n"
    "  show NAME [--weights W] [--image_size N] [--json]\n"
    "                                  feature size, parameters, preprocessing and freeze stages of NAME"
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one :class:`ConfigError` line (exit status 2 through ``main``)."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage."""
        raise ConfigError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    """The parser of ``backbones list`` and ``backbones show``."""
    top = _Parser(
        prog=PROG,
        description="List backbones, or show one's feature size, parameters, preprocessing and freeze stages.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="action", required=True, metavar="{list,show}", parser_class=_Parser)
    listing = sub.add_parser("list", help="backbone names matching PATTERN", prog=f"{PROG} list")
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*' (default: all)")
    show = sub.add_parser("show", help="one backbone's size, preprocessing and stages", prog=f"{PROG} show")
    show.add_argument("name", help="backbone name: resnet50, torchvision/resnet50, timm/<architecture>[.<tag>]")
    show.add_argument(
        "--weights", default=None, help="DEFAULT, IMAGENET1K_V2, … (torchvision), pretrained (timm); default: none"
    )
    show.add_argument(
        "--image_size", type=int, default=None, help="the data's image size: warn when the weights' size differs"
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    return top


def main(argv: Sequence[str]) -> None:
    """Run ``backbones list`` or ``backbones show`` with the arguments after ``backbones``."""
    args = list(argv)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
        raise ConfigError(f"{PROG}: unknown option {args[0]}; use '{PROG} list [PATTERN]' or '{PROG} show NAME'")
    options = parser().parse_args(args)
    if options.action == "list":
        lines = list_names(options.pattern)
        if not lines:
            raise ConfigError(f"no backbone name matches {options.pattern!r}; try '{PROG} list' for all")
        print("\n".join(lines))
        return
    info = describe(options.name, options.weights)
    trained = options.weights is not None and not is_weights_file(options.weights)  # weights with their own size
    warning = size_mismatch_warning(info.preprocessing, options.image_size) if options.image_size and trained else None
    if options.json:
        print(json_module.dumps(info.to_dict() | ({"warning": warning} if warning else {}), indent=2))
    else:
        print(info.text())
        if warning:
            print(f"warning: {warning}")


def list_names(pattern: str = "*") -> list[str]:
    """Lines naming every backbone matching ``pattern``: torchvision (with weights), registered, then timm ones."""
    lines: list[str] = []
    torchvision_names = set(torchvision.models.list_models(module=torchvision.models))
    if not pattern.startswith(TIMM_PREFIX):
        bare = pattern.removeprefix(TORCHVISION_PREFIX)
        for name in list_backbones():
            if not fnmatch.fnmatchcase(name, bare):
                continue
            if name in torchvision_names:
                lines.append(f"{name}  (torchvision; weights: {', '.join(_weights_names(name)) or 'none'})")
            else:
                lines.append(f"{name}  (registered; weights: a local file)")
    if not pattern.startswith(TORCHVISION_PREFIX):
        import timm

        lines += [TIMM_PREFIX + n for n in timm.list_models(pattern.removeprefix(TIMM_PREFIX), pretrained=True)]
    return lines


def _weights_names(name: str) -> list[str]:
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return []
    return [f"DEFAULT={enum.DEFAULT.name}", *(member.name for member in enum)]  # iteration skips the DEFAULT alias


@dataclass(frozen=True)
class BackboneInfo:
    """What ``backbones show`` reports: feature size, parameters, preprocessing and stages ``(name, parameters)``."""

    name: str
    weights: str | None
    feature_dim: int
    parameters: int
    preprocessing: Preprocessing
    stages: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``feature_dim``, ``parameters``, the preprocessing's keys, ``stages``)."""
        return {
            "backbone": self.name,
            "weights": self.weights,
            "feature_dim": self.feature_dim,
            "parameters": self.parameters,
            **self.preprocessing.to_dict(),
            "stages": [{"name": name, "parameters": count} for name, count in self.stages],
        }

    def text(self) -> str:
        """The human-readable report."""
        pre = self.preprocessing
        width = max([len(name) for name, _ in self.stages] + [5])
        lines = [
            f"backbone      {self.name} (weights: {self.weights})",
            f"feature_dim   {self.feature_dim}",
            f"parameters    {self.parameters:,}",
            f"preprocessing resize {pre.resize_size} ({pre.interpolation}), {_CROPS[pre.crop_mode]} {pre.input_size} "
            f"(crop_pct {pre.crop_pct:.4g})",
            f"              mean {_floats(pre.mean)}, std {_floats(pre.std)}",
            f"stages        {len(self.stages)}: model.freeze: N freezes the first N; an unfreeze schedule thaws "
            "them from the last one down",
        ]
        lines += [f"  {i:>3}  {name:<{width}}  {count:>13,}" for i, (name, count) in enumerate(self.stages, 1)]
        if self.weights is None and not is_timm_name(self.name):
            hint = (
                "; --weights DEFAULT shows the weights'"
                if _weights_names(self.name.removeprefix(TORCHVISION_PREFIX))
                else ""
            )
            lines.insert(5, f"              (no weights: lit_transfer's defaults{hint})")
        return "\n".join(lines)


def describe(name: str, weights: str | None = None) -> BackboneInfo:
    """Build ``name`` on the meta device and resolve its preprocessing; an unknown name is a :class:`ConfigError`."""
    try:
        pre = resolve_preprocessing(name, weights)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost, never a download
            backbone = build_backbone(name, None)
    except ValueError as err:
        raise ConfigError(_with_timm_hint(name, str(err))) from None
    by_name = dict(backbone.module.named_parameters())
    stages = tuple(
        (stage, sum(by_name[p].numel() for p in params)) for stage, params in stage_parameters(backbone.module)
    )
    return BackboneInfo(
        name=name,
        weights=weights,
        feature_dim=backbone.feature_dim,
        parameters=sum(p.numel() for p in backbone.module.parameters()),
        preprocessing=pre,
        stages=stages,
    )


def _with_timm_hint(name: str, message: str) -> str:
    """``message`` plus, for a bare name that timm knows, the timm spelling of it."""
    if is_timm_name(name) or not message.startswith("unknown backbone"):
        return message
    import timm

    arch = name.partition(".")[0]
    if timm.is_model(arch):
        return f"{message}; timm has it: {TIMM_PREFIX}{name}"
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.8)
    return f"{message}; timm: {[TIMM_PREFIX + c for c in close]}" if close else message


_CROPS = {"center": "center crop", "squash": "squashed, center crop", "border": "long side, center crop or pad"}


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
