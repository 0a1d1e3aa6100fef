"""Checkpoint → model: load a checkpoint safely and rebuild its model from it alone, for an allowed class only."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from lit_transfer.core.checkpoints import CheckpointLoadError
from lit_transfer.core.checkpoints import load_checkpoint as load_weights_only
from lit_transfer.models.classifier import TransferClassifier


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or cannot be turned back into a model."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); :class:`CheckpointError` names the file when it cannot.

    The message is :func:`lit_transfer.core.checkpoints.load_checkpoint`'s, the one every loader of lit_transfer gives.
    """
    try:
        return load_weights_only(path, require_state_dict=True)
    except CheckpointLoadError as err:
        raise CheckpointError(str(err)) from err


# The model classes a checkpoint may name, by every import path they are known under. A checkpoint's say-so never
# imports anything: a ``.py`` file shipped beside a checkpoint would run (``python -m`` puts the working folder first
# on the import path).
MODEL_CLASSES: dict[str, str] = {
    "TransferClassifier": "lit_transfer.models.classifier:TransferClassifier",
    "lit_transfer.TransferClassifier": "lit_transfer.models.classifier:TransferClassifier",
    "lit_transfer.models.TransferClassifier": "lit_transfer.models.classifier:TransferClassifier",
    "lit_transfer.models.classifier.TransferClassifier": "lit_transfer.models.classifier:TransferClassifier",
    "RotNetClassifier": "lit_transfer.models.rotnet:RotNetClassifier",
    "lit_transfer.RotNetClassifier": "lit_transfer.models.rotnet:RotNetClassifier",
    "lit_transfer.models.RotNetClassifier": "lit_transfer.models.rotnet:RotNetClassifier",
    "lit_transfer.models.rotnet.RotNetClassifier": "lit_transfer.models.rotnet:RotNetClassifier",
}


def refuse_unknown_class(class_path: str, source: str = "the checkpoint") -> str:
    """The message refusing a model class that is not one of lit_transfer's (:data:`MODEL_CLASSES`)."""
    known = sorted({v.replace(":", ".") for v in MODEL_CLASSES.values()})
    return (
        f"model class {class_path!r} named by {source} is not a TransferClassifier that lit_transfer knows "
        f"({', '.join(known)}); it is not imported, since a checkpoint must not choose code to run"
    )


def model_class(class_path: str | None, source: str = "the checkpoint") -> type[TransferClassifier]:
    """The model class a checkpoint names (``hyper_parameters["_class_path"]``); TransferClassifier by default.

    Only the classes of :data:`MODEL_CLASSES` are accepted, and nothing else is imported, so a checkpoint can neither
    run a module of its choosing nor make this command call an arbitrary callable.
    """
    if not class_path:
        return TransferClassifier
    if class_path not in MODEL_CLASSES:
        raise CheckpointError(refuse_unknown_class(class_path, source))
    module_name, _, name = MODEL_CLASSES[class_path].partition(":")
    return getattr(importlib.import_module(module_name), name)


def checkpoint_backbone_class(ckpt: dict[str, Any]) -> str | None:
    """The class path of the user's own backbone module a checkpoint names, or ``None`` for a backbone name."""
    backbone = (ckpt.get("hyper_parameters") or {}).get("backbone")
    return str(backbone.get("class_path")) if isinstance(backbone, dict) and backbone.get("class_path") else None


def refuse_untrusted_backbone(class_path: str, source: str, how: str) -> str:
    """Why a user module a checkpoint names is not imported, and how to say it is meant."""
    return (
        f"{source} names its backbone as the module {class_path!r}, which is imported only when you name it too "
        f"({how}): a checkpoint must not choose code to run"
    )


def rebuild_model(
    ckpt: dict[str, Any], source: str = "the checkpoint", trusted_backbone: str | None = None
) -> TransferClassifier:
    """The checkpoint's model in eval mode: its class, its hyperparameters (``weights`` → None), its state dict.

    A user's own backbone module (``backbone: {class_path: …}``) is imported only when ``trusted_backbone`` names
    the same class path.

    Raises:
        CheckpointError: an unknown model class, an untrusted backbone module, or a model that does not rebuild.
    """
    own = checkpoint_backbone_class(ckpt)
    if own is not None and own != trusted_backbone:
        raise CheckpointError(refuse_untrusted_backbone(own, source, f"--trust_backbone {own}"))
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cls = model_class(hparams.get("_class_path"), source)
    params = inspect.signature(cls.__init__).parameters
    init = {k: v for k, v in hparams.items() if k in params and k != "self"}
    if "weights" in params:
        init["weights"] = None  # the state dict supplies every weight; never download or read a weight file
        if "weights_map" in params:
            init["weights_map"] = None  # it mapped the weight file, which is not read
    if isinstance(init.get("backbone"), dict):  # a user's own module ({class_path, init_args}): no weights file either
        init["backbone"] = {k: v for k, v in init["backbone"].items() if k not in ("weights", "weights_map")}
    try:
        model = cls(**init)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"cannot rebuild {cls.__name__} from {source}: {err}") from err
    return model.eval()
