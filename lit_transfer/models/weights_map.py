r"""``model.weights_map``: fitting a weights file saved by another implementation of the same architecture.

Tensors of a weights file are matched to a backbone's by name, after an optional rewrite of the names, or by
position:

- ``null``: by name (a ``module.`` prefix of a DDP-wrapped save is removed).
- ``{"strip_prefix": "encoder.", "rename": [["^_blocks\\.", "blocks."], ...]}``: by name after removing the prefix
  (one, or a list) from every name that has it, then applying each ``re.sub(regex, replacement, name)`` in order.
  A prefix or a regex that changes no name is refused (it is a typo, or the wrong file).
- ``positional``: the file's tensors in the order they were saved against the backbone's ``state_dict()`` order,
  every shape checked; any mismatch is refused naming the first mismatching pair. BatchNorm ``num_batches_tracked``
  counters are paired among themselves (and left alone when one side has none).

Either way the file's own classifier (its last layer(s) taking the backbone's features, e.g. ``_fc``, ``fc``,
``classifier``, ``head``) is dropped and named in the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

WeightsMapSpec = dict[str, Any] | str | None  # dict first: jsonargparse tries a Union's types in order
_COUNTER = "num_batches_tracked"
_KEYS = ("strip_prefix", "rename")
_EXAMPLE = '{"strip_prefix": "model.", "rename": [["^_blocks\\\\.", "blocks."]]}'


@dataclass
class MappedWeights:
    """Tensors renamed to the backbone's names, the file's classifier tensors that were dropped, and how."""

    state: dict[str, torch.Tensor]
    dropped: dict[str, torch.Tensor] = field(default_factory=dict)
    how: str = "by name"
    strict: bool = False  # positional maps are complete by construction; a missing tensor is then an error


def check_weights_map(spec: object) -> None:
    """Refuse a malformed ``model.weights_map`` before anything is built, saying what it may be."""
    what = f"model.weights_map={spec!r}"
    if spec is None or spec == "positional":
        return
    if isinstance(spec, str):
        raise ValueError(f"{what}: use positional, a dict such as {_EXAMPLE}, or null")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{what}: use positional, a dict such as {_EXAMPLE}, or null")
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; the keys are {list(_KEYS)}, e.g. {_EXAMPLE}")
    prefixes = spec.get("strip_prefix")
    if prefixes is not None and not (
        isinstance(prefixes, str) or (isinstance(prefixes, list) and all(isinstance(p, str) for p in prefixes))
    ):
        raise ValueError(f"{what}: strip_prefix is a string or a list of strings, e.g. 'model.'")
    for rule in spec.get("rename") or []:
        if not (isinstance(rule, Sequence) and len(rule) == 2 and all(isinstance(r, str) for r in rule)):
            raise ValueError(f"{what}: each rename rule is a pair [regex, replacement], not {rule!r}")
        try:
            re.compile(rule[0])
        except re.error as err:
            raise ValueError(f"{what}: rename regex {rule[0]!r} is not a valid regular expression ({err})") from err


def map_weights(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    spec: WeightsMapSpec,
    *,
    feature_dim: int,
    classifier_prefixes: Sequence[str],
    path: str,
    name: str,
) -> MappedWeights:
    """Rename the tensors of a weights file (``source``, in saved order) to the backbone's names (``target``).

    Args:
        source: the file's tensors, in the order they were saved.
        target: the backbone's ``state_dict()``.
        spec: the ``model.weights_map`` (see the module docstring).
        feature_dim: the backbone's feature size (what a classifier of the file takes).
        classifier_prefixes: state-dict prefixes of the backbone's removed classifier (dropped from the file).
        path: the file (named in error messages).
        name: the backbone (named in error messages).
    """
    check_weights_map(spec)
    where = f"weights file {path!r} and backbone {name!r}"
    if spec == "positional":
        return _positional(dict(source), target, feature_dim, where)
    state = dict(source)
    how = "by name"
    if isinstance(spec, Mapping):
        state, how = _rename(state, spec, f"weights file {path!r}")
    dropped = {k: v for k, v in state.items() if any(k == p or k.startswith(p + ".") for p in classifier_prefixes)}
    state = {k: v for k, v in state.items() if k not in dropped}
    tail = _trailing_classifiers(state, feature_dim, lambda keys: not any(k in target for k in keys))
    dropped |= {k: state.pop(k) for k in tail}
    return MappedWeights(state, dropped, how)


def _rename(state: dict[str, torch.Tensor], spec: Mapping[str, Any], where: str) -> tuple[dict[str, torch.Tensor], str]:
    how: list[str] = []
    prefixes = spec.get("strip_prefix") or []
    for prefix in [prefixes] if isinstance(prefixes, str) else prefixes:
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(
                f"model.weights_map strip_prefix {prefix!r} starts no tensor name of {where}; its names start like "
                f"{sorted({k.split('.')[0] + '.' for k in state})[:8]}"
            )
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        how.append(f"strip_prefix {prefix!r}")
    for regex, replacement in spec.get("rename") or []:
        renamed = {re.sub(regex, replacement, k): v for k, v in state.items()}
        if list(renamed) == list(state):
            raise ValueError(f"model.weights_map rename {regex!r} changes no tensor name of {where}")
        if len(renamed) != len(state):
            raise ValueError(f"model.weights_map rename {regex!r} → {replacement!r} gives two tensors one name")
        state = renamed
    if spec.get("rename"):
        rules = len(spec["rename"])
        how.append(f"{rules} rename rule{'s' if rules > 1 else ''}")
    return state, "by name after " + ", ".join(how) if how else "by name"


def _is_classifier(tensors: Mapping[str, torch.Tensor], feature_dim: int) -> bool:
    """Whether a module's tensors are a linear (or 1x1 convolution) layer taking ``feature_dim`` features."""
    weight = next((v for k, v in tensors.items() if k.rpartition(".")[2] == "weight"), None)
    if weight is None or set(tensors) - {k for k in tensors if k.rpartition(".")[2] in ("weight", "bias")}:
        return False
    if weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1):
        return False
    return weight.dim() in (2, 4) and weight.shape[1] == feature_dim


def _trailing_classifiers(
    state: Mapping[str, torch.Tensor], feature_dim: int, allowed: Callable[[list[str]], bool], limit: int = 2
) -> list[str]:
    """Names of the tensors of the file's last module(s) when they are classifiers ``allowed`` to be dropped."""
    keys = list(state)
    dropped: list[str] = []
    for _ in range(limit):
        if not keys:
            break
        module = keys[-1].rpartition(".")[0]
        tail: list[str] = []
        while keys and keys[-1].rpartition(".")[0] == module:
            tail.insert(0, keys.pop())
        if not _is_classifier({k: state[k] for k in tail}, feature_dim) or not allowed(tail):
            break
        dropped = tail + dropped
    return dropped


def _positional(
    source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], feature_dim: int, where: str
) -> MappedWeights:
    src = {k: v for k, v in source.items() if not k.endswith(_COUNTER)}
    tgt = [(k, v) for k, v in target.items() if not k.endswith(_COUNTER)]
    surplus = len(src) - len(tgt)
    dropped = _trailing_classifiers(src, feature_dim, lambda keys: len(keys) <= surplus) if surplus > 0 else []
    pairs = [(k, v) for k, v in src.items() if k not in dropped]
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(pairs, tgt, strict=False)):
        if tuple(sval.shape) != tuple(tval.shape):
            raise ValueError(
                f"model.weights_map positional: {where} do not match at tensor #{i}: the file's {skey!r} "
                f"{tuple(sval.shape)} against the backbone's {tkey!r} {tuple(tval.shape)}. The file is of another "
                "architecture or stores its tensors in another order: check model.backbone, or map by name with "
                f"model.weights_map {_EXAMPLE}"
            )
    if len(pairs) != len(tgt):
        extra = (
            f"the file's {pairs[len(tgt)][0]!r} onwards have no counterpart"
            if len(pairs) > len(tgt)
            else f"the backbone's {tgt[len(pairs)][0]!r} onwards get nothing"
        )
        raise ValueError(
            f"model.weights_map positional: {where} hold {len(pairs)} and {len(tgt)} tensors"
            f"{f' (after dropping the classifier {dropped})' if dropped else ''}: {extra}. Check model.backbone"
        )
    state = {tkey: sval for (_, sval), (tkey, _) in zip(pairs, tgt, strict=True)}
    src_counters = [v for k, v in source.items() if k.endswith(_COUNTER)]
    tgt_counters = [k for k in target if k.endswith(_COUNTER)]
    if len(src_counters) == len(tgt_counters):
        state |= dict(zip(tgt_counters, src_counters, strict=True))
    return MappedWeights(state, {k: source[k] for k in dropped}, "positional", strict=True)
