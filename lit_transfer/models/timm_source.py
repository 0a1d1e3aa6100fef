"""Backbones from timm: ``timm/<architecture>[.<pretrained tag>]`` and ``hf-hub:<org>/<repo>`` names.

A model is built with ``timm.create_model(..., num_classes=0)``, so it already ends in its pooled features; its
feature size, input normalization and the name of the classifier it was trained with come from timm's own model
attributes (``num_features``/``head_hidden_size``, ``pretrained_cfg``). ``weights: pretrained`` downloads through
timm and the Hugging Face Hub; without a network that fails within seconds (the Hub would otherwise retry for a
minute) and says how to give a local file instead. Stages for ``freeze: N`` come from timm's ``group_matcher``.

timm is imported only when a timm backbone is used.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from torch import nn

TIMM_PREFIX = "timm/"
HF_HUB_PREFIX = "hf-hub:"
PROBE_TIMEOUT_S = 3.0
_UNIT = re.compile(r"^([^.]*[^.\d]\.\d+|[^.]+)")  # a container and its index, or a first name


@dataclass
class TimmModel:
    """A timm model built without its classifier, and what a backbone needs to know about it."""

    module: nn.Module
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classifier: tuple[str, ...]  # state-dict prefixes of the classifier(s) the pretrained weights were trained with


def is_timm_name(name: str) -> bool:
    """Whether a backbone name is a timm one (``timm/…`` or ``hf-hub:…``)."""
    return name.startswith((TIMM_PREFIX, HF_HUB_PREFIX))


def timm_model_name(name: str) -> str:
    """The name timm knows: ``timm/convnext_tiny.fb_in22k`` → ``convnext_tiny.fb_in22k``; ``hf-hub:…`` stays."""
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name


def is_timm_model(module: nn.Module) -> bool:
    """Whether a module is a timm model (it has timm's ``group_matcher`` and ``pretrained_cfg``)."""
    cfg = getattr(module, "pretrained_cfg", None)
    return callable(getattr(module, "group_matcher", None)) and isinstance(cfg, dict)


def check_timm_name(name: str) -> None:
    """Refuse an unknown timm architecture or tag, suggesting names (``hf-hub:`` names are checked by the Hub)."""
    import timm
    import timm.models

    model_name = timm_model_name(name)
    if model_name.startswith(HF_HUB_PREFIX):
        if model_name.count("/") != 1 or not model_name[len(HF_HUB_PREFIX) :].strip("/"):
            raise ValueError(f"backbone {name!r}: write a Hugging Face Hub model as hf-hub:<org>/<repo>")
        return
    arch = model_name.partition(".")[0]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {[TIMM_PREFIX + c for c in close]}?" if close else "see timm.list_models()"
        raise ValueError(f"unknown timm backbone {name!r}; {hint}")
    if "." in model_name:
        try:
            timm.models.get_pretrained_cfg(model_name, allow_unregistered=False)
        except RuntimeError as err:
            tags = [TIMM_PREFIX + t for t in timm.list_pretrained(f"{arch}.*")]
            raise ValueError(
                f"unknown pretrained tag of timm backbone {name!r} ({_first_line(err)}); its tags: {tags or 'none'}"
            ) from err


def build_timm(name: str, pretrained: bool) -> TimmModel:
    """Build timm backbone ``name`` (``timm/…`` or ``hf-hub:…``) without its classifier, pretrained or random."""
    check_timm_name(name)
    model_name = timm_model_name(name)
    if pretrained or model_name.startswith(HF_HUB_PREFIX):  # an hf-hub model's very config comes from the Hub
        model = _create_from_hub(name, model_name, pretrained)
    else:
        model = _create(name, model_name, pretrained=False)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    classifier = cfg.get("classifier") or ()
    feature_dim: Any = getattr(model, "head_hidden_size", None) or model.num_features
    return TimmModel(
        module=model,
        feature_dim=int(feature_dim),
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        classifier=(classifier,) if isinstance(classifier, str) else tuple(classifier),
    )


def _create(name: str, model_name: str, pretrained: bool) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:  # e.g. an unknown pretrained tag
        raise ValueError(f"cannot build timm backbone {name!r}: {_first_line(err)}") from err


def _create_from_hub(name: str, model_name: str, pretrained: bool) -> nn.Module:
    """Create with weights from the local cache if they are there, else download after a quick reachability check."""
    import huggingface_hub.constants as hub

    try:
        with _hub_offline():
            return _create(name, model_name, pretrained)
    except Exception as cached_err:  # not in the cache (or no network needed and another error: raised below)
        offline_reason = _first_line(cached_err)
    if hub.HF_HUB_OFFLINE:
        raise ValueError(download_error(name, f"HF_HUB_OFFLINE is set and the cache has no copy: {offline_reason}"))
    url = _source_url(model_name)
    unreachable = _unreachable(url)
    if unreachable:
        raise ValueError(download_error(name, f"cannot reach {urlparse(url).netloc or url}: {unreachable}"))
    try:
        return _create(name, model_name, pretrained)
    except Exception as err:
        raise ValueError(download_error(name, _first_line(err))) from err


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make the Hugging Face Hub answer from its cache only (no request, no retries) for the block's duration."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _source_url(model_name: str) -> str:
    """Where the weights of ``model_name`` would come from: the Hub's endpoint, or the URL of a timm weights file."""
    import huggingface_hub.constants as hub
    import timm.models

    if model_name.startswith(HF_HUB_PREFIX):
        return hub.ENDPOINT
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # an unknown tag: create_model names it later
        return hub.ENDPOINT
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        return str(cfg.url)
    return hub.ENDPOINT


def _unreachable(url: str) -> str | None:
    """Why the host of ``url`` (or the proxy that would carry the request) cannot be reached quickly, or None."""
    target = urlparse(url)
    proxy = urllib.request.getproxies().get(target.scheme or "https")
    if proxy:
        target = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (80 if target.scheme == "http" else 443)
    try:
        with socket.create_connection((target.hostname or url, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return str(err) or type(err).__name__


def download_error(name: str, reason: str) -> str:
    """What to do when the pretrained weights of timm backbone ``name`` cannot be downloaded."""
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"cannot download the pretrained weights of backbone {name!r} ({reason}). Without a network, give a local "
        f"file instead: model.weights: path/to/file.pth (or .safetensors, or a lit_transfer .ckpt), plus "
        "model.weights_map (positional, or strip_prefix/rename) when it was saved by another implementation; or "
        f"download it elsewhere into the Hugging Face cache ({cache}); or set model.weights: null (random init)"
    )


def timm_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """A timm model's stages in forward order, from timm's own coarse parameter grouping: (name, parameter names).

    A stage is named after the module its parameters are in (``layer1``, ``blocks.3``, ``stages.0``) or, when timm
    groups several, those joined with ``+`` (``conv1+bn1``, ``blocks.6+conv_head+bn2``).
    """
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))  # type: ignore[operator]
    stages = []
    for _, names in sorted(groups.items()):
        common: list[str] = []
        for parts in zip(*(n.split(".")[:-1] for n in names), strict=False):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        if common:
            stages.append((_unit(".".join(common)), list(names)))
            continue
        units: list[str] = []
        for param in names:
            if _unit(param) not in units:
                units.append(_unit(param))
        stages.append(("+".join(units), list(names)))
    return stages


def _unit(name: str) -> str:
    """The module a stage is named after: ``blocks.6.0.conv.weight`` → ``blocks.6``, ``layer1.0.conv1`` → ``layer1``."""
    match = _UNIT.match(name)
    return match.group(1) if match else name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
