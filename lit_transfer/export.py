"""Export a checkpoint to ONNX or TorchScript with its metadata, and check the export against PyTorch.

``python -m lit_transfer export --ckpt_path X [--format onnx|torchscript] [--out FILE] [--tolerance 1e-4]``

The model is rebuilt from the checkpoint alone (class, hyperparameters, weights; nothing is downloaded). The exported
graph takes ``uint8`` RGB images ``(N, 3, image_size, image_size)`` with any batch size ``N``, normalizes them
inside (as the model does) and returns two outputs: ``logits`` and ``probabilities`` (softmax over classes). Both are
kept: probabilities are what most users want, logits are what calibration, ensembling and margins need, and the
softmax costs nothing.

The file carries what a user needs besides the weights (:func:`build_metadata`): class names, input size, the eval
resize size, mean/std, and for a RotNet model the angle of each class and the preprocessing of its data module's
``predict`` view (``square``, ``low_pass``, ``decode_min_side``, ``rotation``: see :func:`rotation_preprocessing`).
ONNX stores them as ``metadata_props``, one JSON-encoded value per key; TorchScript as the extra file
``metadata.json`` (one JSON object with the same keys). :mod:`lit_transfer.inference` reads either and predicts on
image files with that preprocessing.

After writing, the file is loaded back (onnxruntime, or ``torch.jit.load``) and run against the PyTorch model on
random ``uint8`` batches of several sizes; the largest absolute difference of either output is reported. Above
``--tolerance`` the command exits with status 1 and the file is kept only as ``<name>.parity_failed<suffix>``
(whatever was at ``--out`` before stays untouched). A missing or unreadable checkpoint exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lit_transfer import __version__
from lit_transfer.data.transforms import EVAL_CROP_RATIO
from lit_transfer.models.classifier import TransferClassifier

ExportFormat = Literal["onnx", "torchscript"]
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, str] = ("logits", "probabilities")
TORCHSCRIPT_METADATA_FILE = "metadata.json"
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
PARITY_BATCH_SIZES: tuple[int, ...] = (1, 3, 8)
DEFAULT_SUFFIX: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
_ANGLE_NAME = re.compile(r"^\s*[-+]?\d+(\.\d+)?\s*°\s*$")

# The legacy (TorchScript-based) ONNX exporter and torch.jit.trace are deprecated in torch 2.x but are what exports
# without extra dependencies; their deprecation notices say nothing a user of this command can act on.
_QUIET_WARNINGS: tuple[str, ...] = (
    r".*legacy TorchScript-based ONNX export.*",
    r"`torch\.jit\.\w+` is deprecated.*",
    r"The feature will be removed.*",
)


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or cannot be turned back into a model."""


class ParityError(Exception):
    """The exported file does not run on a parity batch, or gives outputs of the wrong shape."""


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and how closely it matches the PyTorch model."""

    path: Path
    format: ExportFormat
    metadata: dict[str, Any]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
    tolerance: float = DEFAULT_TOLERANCE
    error: str | None = None  # why the exported file could not be run on the parity batches

    @property
    def worst(self) -> float:
        """The largest absolute difference over both outputs."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether the exported file ran on every parity batch and matches the PyTorch model within the tolerance."""
        return self.error is None and self.worst <= self.tolerance


class ExportModule(nn.Module):
    """``uint8`` NCHW images → ``(logits, probabilities)``: the model's normalization, backbone and head.

    The LightningModule itself is not traced: its ``trainer`` property raises outside a Trainer and its metrics have
    no place in an inference graph. The parity check compares this module's export with the model's own ``forward``.
    """

    def __init__(self, model: TransferClassifier) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.register_buffer("mean", model.mean.detach().clone())
        self.register_buffer("std", model.std.detach().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and softmax probabilities of a ``uint8`` batch."""
        x = (images.float() / 255.0 - self.mean) / self.std
        logits = self.head(self.backbone(x))
        return logits, logits.softmax(dim=1)


# --------------------------------------------------------------------------- checkpoint → model


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); :class:`CheckpointError` names the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded with weights_only=True ({reason}); is it a lit_transfer "
            "checkpoint?"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict: not a lit_transfer checkpoint")
    return ckpt


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


def rebuild_model(ckpt: dict[str, Any], source: str = "the checkpoint") -> TransferClassifier:
    """The checkpoint's model in eval mode: its class, its hyperparameters (``weights`` → None), its state dict."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cls = model_class(hparams.get("_class_path"), source)
    params = inspect.signature(cls.__init__).parameters
    init = {k: v for k, v in hparams.items() if k in params and k != "self"}
    if "weights" in params:
        init["weights"] = None  # the state dict supplies every weight; never download or read a weight file
    try:
        model = cls(**init)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"cannot rebuild {cls.__name__} from {source}: {err}") from err
    return model.eval()


def class_angles(model: TransferClassifier) -> list[float] | None:
    """Each class's rotation angle for a RotNet model, else ``None``.

    RotNetClassifier knows its angles; any other model whose class names are all angles (``0°``, ``45°``, …, as a
    RotNet data module names them) gets them read from its names.
    """
    angles = getattr(model, "class_angles", None)
    if angles is not None:
        return [float(a) for a in angles]
    names = [str(n) for n in model.class_names]
    if names and all(_ANGLE_NAME.match(n) for n in names):
        return [float(n.strip().rstrip("°").strip()) for n in names]
    return None


def eval_resize_size(image_size: int, angles: Sequence[float] | None, ckpt: dict[str, Any] | None = None) -> int:
    """Short side images are resized to before the ``image_size`` center crop, as the data modules evaluate.

    Classifiers: ``round(image_size / 0.875)``. RotNet: the side of the square source the data module rotates
    (:func:`rotation_preprocessing`).
    """
    if angles is None:
        return round(image_size / EVAL_CROP_RATIO)
    return int(rotation_preprocessing(ckpt or {}, angles, image_size)["source_size"])


def rotation_preprocessing(
    ckpt: dict[str, Any], angles: Sequence[float], image_size: int, resize_size: int | None = None
) -> dict[str, Any]:
    """How the RotNet data module made the ``predict`` view the model is meant to see, as plain values.

    Read from the checkpoint's ``lit_transfer["rotation"]`` entry (written by RotNetClassifier from its data module:
    geometry, square, source size, low-pass, JPEG decode size). A checkpoint without it gets RotNetDataModule's
    defaults (``safe``, ``crop``, ``decode_scale`` 2), with 4 exact ``rot90`` classes when its angles are the
    multiples of 90°. ``resize_size`` replaces the source size (and the low-pass padding follows it).
    """
    from lit_transfer.data.rotnet import predict_preprocessing

    saved = (ckpt.get("lit_transfer") or {}).get("rotation")
    if isinstance(saved, dict):
        keys = ("num_rotations", "angle_mode", "geometry", "square", "decode_scale")
        settings = {k: saved[k] for k in keys if k in saved}
        same_size = int(saved.get("image_size") or image_size) == image_size
        source = saved.get("source_size") if same_size else None
    else:
        step = 360 / len(angles)
        exact = all(abs(float(a) / step - round(float(a) / step)) < 1e-6 for a in angles)
        settings = {"num_rotations": len(angles), "angle_mode": "discrete" if exact else "binned"}
        source = None
    return predict_preprocessing(image_size, **settings, source_side=resize_size or source)


def build_metadata(
    model: TransferClassifier,
    ckpt: dict[str, Any],
    ckpt_path: str | Path,
    image_size: int | None = None,
    resize_size: int | None = None,
) -> dict[str, Any]:
    """Everything an exported file needs to be used without lit_transfer: classes, sizes, normalization, angles.

    Raises:
        CheckpointError: when neither the checkpoint nor ``image_size`` gives the input size.
    """
    info = ckpt.get("lit_transfer") or {}
    image_size = image_size or info.get("image_size")
    if not image_size:
        raise CheckpointError(f"checkpoint {str(ckpt_path)!r} does not record the image size; give --image_size")
    image_size = int(image_size)
    angles = class_angles(model)
    class_names = [str(n) for n in model.class_names]
    rotation = rotation_preprocessing(ckpt, angles, image_size, resize_size) if angles is not None else None
    resize_size = rotation["source_size"] if rotation is not None else resize_size or eval_resize_size(image_size, None)
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": "rotation" if angles is not None else "classification",
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "backbone": model.hparams.get("backbone"),
        "class_names": class_names,
        "num_classes": len(class_names),
        "image_size": image_size,
        "resize_size": int(resize_size),
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "shape": ["batch", 3, image_size, image_size],
        },
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": _describe_preprocessing(rotation),
        "manifest_hash": info.get("manifest_hash"),
        "checkpoint": Path(ckpt_path).name,
        "epoch": ckpt.get("epoch"),
        "lit_transfer_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    if angles is not None and rotation is not None:  # (one is None exactly when the other is)
        metadata["class_angles"] = angles
        metadata["angle_unit"] = "degrees counter-clockwise"
        # what lit_transfer.inference needs to rebuild the data module's predict view, and where it came from
        metadata["square"] = rotation["square"]
        metadata["low_pass"] = rotation["low_pass"]
        metadata["decode_min_side"] = rotation["decode_min_side"]
        metadata["rotation"] = rotation
    saved = info.get("class_names")
    if saved is not None and list(saved) != class_names:
        raise CheckpointError(f"checkpoint {str(ckpt_path)!r}: class names {saved} differ from the model's")
    return metadata


def _describe_preprocessing(rotation: dict[str, Any] | None) -> str:
    """The ``preprocessing`` text of the metadata: what :mod:`lit_transfer.inference` does to an image."""
    start = "EXIF orientation applied, RGB (16-bit rescaled, transparency on white), "
    end = "; uint8 in, normalization is in the model"
    if rotation is None:
        return start + "short side resized to resize_size (bilinear, antialiased), center crop of image_size" + end
    if rotation["decode_min_side"] is not None:
        start += "a JPEG of shorter side >= 2 decode_min_side decoded at the reduced size (draft) of shorter side >= "
        start += "decode_min_side, "
    if rotation["square"] == "crop":
        text = "short side resized to resize_size (bilinear, antialiased) and center square of resize_size"
    else:
        text = "squashed to resize_size x resize_size (bilinear, antialiased)"
    if rotation["low_pass"] is not None:
        text += (
            ", reflect-padded by low_pass.pad, low-passed (isotropic raised cosine, flat to low_pass.inner, zero from "
            "low_pass.outer of the Nyquist frequency) and rounded"
        )
    return start + text + ", center crop of image_size" + end


# --------------------------------------------------------------------------- export and parity


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def export_onnx(module: ExportModule, example: torch.Tensor, path: Path, metadata: dict[str, Any], opset: int) -> None:
    """Write ``module`` as ONNX (dynamic batch) with ``metadata`` as JSON-encoded ``metadata_props``."""
    import onnx

    batch = {0: "batch"}
    with _quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,  # the torch.export-based exporter needs onnxscript; this one needs nothing more
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = f"lit_transfer export of {metadata['checkpoint']}: uint8 NCHW RGB images → logits, probabilities"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_torchscript(module: ExportModule, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``module`` as traced TorchScript with ``metadata`` in the extra file ``metadata.json``."""
    with _quiet_deprecations():
        with torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)  # parity is checked on the saved file
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})


def sample_batches(image_size: int, batch_sizes: Sequence[int] = PARITY_BATCH_SIZES, seed: int = 0) -> list[np.ndarray]:
    """Random ``uint8`` image batches ``(n, 3, image_size, image_size)``, one per batch size."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8) for n in batch_sizes]


def exported_runner(path: Path, fmt: ExportFormat) -> Any:
    """A function running the exported file on a ``uint8`` batch: ``array -> (logits, probabilities)``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    with _quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in loaded(torch.from_numpy(batch))]

    return run


def check_parity(
    model: TransferClassifier, path: Path, fmt: ExportFormat, image_size: int, batch_sizes: Sequence[int]
) -> dict[str, float]:
    """Largest absolute difference per output between the exported file and ``model.forward`` (+ softmax).

    A NaN difference counts as infinite.

    Raises:
        ParityError: the file cannot be loaded or run on a batch, or an output has the wrong shape.
    """
    try:
        run = exported_runner(path, fmt)
    except Exception as err:
        raise ParityError(f"the exported file cannot be loaded: {type(err).__name__}: {err}") from err
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for batch in sample_batches(image_size, batch_sizes):
        with torch.no_grad():
            logits = model(torch.from_numpy(batch))
        expected = (logits.numpy(), logits.softmax(dim=1).numpy())
        try:
            outputs = run(batch)
        except Exception as err:
            raise ParityError(
                f"the exported model fails on a batch of {len(batch)}: {type(err).__name__}: {err}"
            ) from err
        for name, got, want in zip(OUTPUT_NAMES, outputs, expected, strict=True):
            if got.shape != want.shape:
                raise ParityError(f"{name} has shape {got.shape} for a batch of {len(batch)}, expected {want.shape}")
            diff = float(np.abs(got.astype(np.float64) - want).max())
            worst[name] = max(worst[name], math.inf if math.isnan(diff) else diff)
    return worst


def default_out(ckpt_path: Path, fmt: ExportFormat) -> Path:
    """``<checkpoint without .ckpt>.onnx`` or ``.torchscript.pt``, beside the checkpoint."""
    stem = ckpt_path.name[: -len(ckpt_path.suffix)] if ckpt_path.suffix else ckpt_path.name
    return ckpt_path.with_name(stem + DEFAULT_SUFFIX[fmt])


def failed_path(out: Path) -> Path:
    """Where an export that failed its parity check is kept: ``<name>.parity_failed<suffix>``."""
    suffix = ".torchscript.pt" if out.name.endswith(".torchscript.pt") else out.suffix
    stem = out.name[: -len(suffix)] if suffix else out.name
    return out.with_name(f"{stem}.parity_failed{suffix}")


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: ExportFormat = "onnx",
    out: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    image_size: int | None = None,
    resize_size: int | None = None,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
) -> ExportResult:
    """Export a checkpoint and check the exported file against the PyTorch model.

    Args:
        ckpt_path: a lit_transfer checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (a folder gets the default name); default: beside the checkpoint.
        tolerance: largest absolute difference of logits or probabilities accepted.
        opset: ONNX opset version.
        image_size: input size when the checkpoint does not record it.
        resize_size: eval resize (short side) to record instead of the data module's default.
        batch_sizes: batch sizes of the random parity batches.

    Returns:
        The result; when it did not pass, the file is at :func:`failed_path` of ``out``, not at ``out``.

    Raises:
        CheckpointError: missing or unreadable checkpoint, or one that cannot be rebuilt.
    """
    if fmt not in DEFAULT_SUFFIX:
        raise ValueError(f"format {fmt!r}: use one of {sorted(DEFAULT_SUFFIX)}")
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    model = rebuild_model(ckpt, source=f"checkpoint {str(ckpt_path)!r}")
    metadata = build_metadata(model, ckpt, ckpt_path, image_size, resize_size)
    target = Path(out) if out is not None else default_out(ckpt_path, fmt)
    if target.is_dir():
        target = target / default_out(ckpt_path, fmt).name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    size = metadata["image_size"]
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # batch 2, so batch 1 and others are checked as dynamic
    module = ExportModule(model).eval()
    try:
        if fmt == "onnx":
            export_onnx(module, example, tmp, metadata, opset)
        else:
            export_torchscript(module, example, tmp, metadata)
        result = ExportResult(tmp, fmt, metadata, tolerance=tolerance, batch_sizes=tuple(batch_sizes))
        try:
            result.max_abs_diff = check_parity(model, tmp, fmt, size, batch_sizes)
        except ParityError as err:
            result.error = str(err)
        result.path = target if result.passed else failed_path(target)
        os.replace(tmp, result.path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return result


# --------------------------------------------------------------------------- command line


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``lit_transfer export``."""
    parser = argparse.ArgumentParser(
        prog="lit_transfer export",
        description="Export a checkpoint to ONNX or TorchScript (uint8 NCHW images in, logits and probabilities out) "
        "with its class names, input size, resize size, mean/std and RotNet angles as metadata, and check the "
        "exported file against the PyTorch model.",
    )
    parser.add_argument("--ckpt_path", required=True, help="lit_transfer checkpoint to export")
    parser.add_argument("--format", choices=sorted(DEFAULT_SUFFIX), default="onnx", help="default: onnx")
    parser.add_argument("--out", default=None, help="output file or folder; default: beside the checkpoint")
    parser.add_argument(
        "--tolerance",
        type=_non_negative,
        default=DEFAULT_TOLERANCE,
        help=f"largest absolute difference from PyTorch accepted; exit status 1 above it (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--opset", type=_positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--image_size", type=_positive_int, default=None, help="input size if the checkpoint lacks it")
    parser.add_argument("--resize_size", type=_positive_int, default=None, help="override the recorded eval resize")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lit_transfer export``: export, report the parity check, exit 1 above tolerance, 2 on bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        result = export_checkpoint(
            args.ckpt_path, args.format, args.out, args.tolerance, args.opset, args.image_size, args.resize_size
        )
    except CheckpointError as err:
        print(f"lit_transfer export: error: {err}", file=sys.stderr)
        sys.exit(2)
    meta = result.metadata
    runtime = "onnxruntime" if result.format == "onnx" else "TorchScript"
    diffs = ", ".join(f"{name} {value:.2e}" for name, value in result.max_abs_diff.items())
    sizes = ", ".join(str(n) for n in result.batch_sizes)
    print(
        f"{result.format} export of {meta['model_class'].rsplit('.', 1)[-1]} ({meta['backbone']}, "
        f"{meta['num_classes']} classes, {meta['task']}): input uint8 [batch, 3, {meta['image_size']}, "
        f"{meta['image_size']}], outputs {' + '.join(OUTPUT_NAMES)}, eval resize {meta['resize_size']}"
    )
    rotation = meta.get("rotation")
    if rotation:
        low_pass = "low-passed" if rotation["low_pass"] else "no low-pass"
        print(
            f"preprocessing recorded: the RotNet predict view ({rotation['geometry']} geometry, square "
            f"{rotation['square']}, {rotation['source_size']} px source, {low_pass}, center crop {meta['image_size']})"
        )
    verdict = "ok" if result.passed else "FAILED"
    found = f"error: {result.error}" if result.error else f"max |diff| {diffs}"
    print(
        f"parity {runtime} vs PyTorch on random uint8 batches of {sizes}: {found} "
        f"(tolerance {result.tolerance:g}): {verdict}"
    )
    if not result.passed:
        why = result.error or f"differs from PyTorch by {result.worst:.3e} > {result.tolerance:g}"
        print(
            f"lit_transfer export: the exported model {why}; kept as {result.path} for inspection, nothing written "
            "to the output path",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"wrote {result.path}")


if __name__ == "__main__":
    main()
