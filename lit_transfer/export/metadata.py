"""What an exported file carries besides its weights: class names, sizes, normalization, RotNet angles and views.

``temperature`` is the model's (1 unless calibrated with ``--calibrate temperature``): the file's ``probabilities``
output is ``softmax(logits / temperature)`` already; it is recorded for whoever uses the ``logits`` output.

ONNX stores it as ``metadata_props``, one JSON-encoded value per key; TorchScript as the extra file
``metadata.json`` (one JSON object with the same keys). :mod:`lit_transfer.inference` reads either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_transfer import __version__
from lit_transfer.core.angles import named_angles
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.data.transforms import EVAL_CROP_RATIO
from lit_transfer.export.graph import INPUT_NAME, OUTPUT_NAMES
from lit_transfer.export.rebuild import CheckpointError
from lit_transfer.models.classifier import TransferClassifier

FORMAT_VERSION = 1


def class_angles(model: TransferClassifier) -> list[float] | None:
    """Each class's rotation angle for a RotNet model, else ``None``.

    RotNetClassifier knows its angles; any other model whose class names are all angles (``0°``, ``45°``, …, as a
    RotNet data module names them) gets them read from its names.
    """
    angles = getattr(model, "class_angles", None)
    if angles is not None:
        return [float(a) for a in angles]
    return named_angles([str(n) for n in model.class_names])


def eval_resize_size(image_size: int, angles: Sequence[float] | None, ckpt: dict[str, Any] | None = None) -> int:
    """Short side images are resized to before the ``image_size`` center crop, as the data modules evaluate.

    Classifiers: the checkpoint's recorded preprocessing (:func:`eval_preprocessing`), else
    ``round(image_size / 0.875)``. RotNet: the side of the square source the data module rotates
    (:func:`rotation_preprocessing`).
    """
    if angles is None:
        saved = ((ckpt or {}).get("lit_transfer") or {}).get("preprocessing")
        return eval_preprocessing(saved, image_size).resize_size if saved else round(image_size / EVAL_CROP_RATIO)
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
    pre = eval_preprocessing(info.get("preprocessing"), image_size, resize_size)
    resize_size = rotation["source_size"] if rotation is not None else pre.resize_size
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": "rotation" if angles is not None else "classification",
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "backbone": model.backbone_name,  # a display name: resnet50, timm/convnext_tiny, my_pkg.MyNet
        "class_names": class_names,
        "num_classes": len(class_names),
        "image_size": image_size,
        "resize_size": int(resize_size),
        "interpolation": pre.interpolation if rotation is None else "bilinear",
        "crop_mode": pre.crop_mode if rotation is None else "center",
        "crop_pct": pre.crop_pct,
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "temperature": float(model.temperature),  # probabilities = softmax(logits / temperature)
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "shape": ["batch", 3, image_size, image_size],
        },
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": _describe_preprocessing(rotation, pre),
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


def eval_preprocessing(saved: Any, image_size: int, resize_size: int | None = None) -> Preprocessing:
    """A classifier's evaluation preprocessing at ``image_size``: the checkpoint's (as trained), else the default.

    ``resize_size`` replaces the saved resize; at another ``image_size`` than trained the resize keeps the trained
    crop fraction. Checkpoints from before preprocessing was recorded get ``round(image_size / 0.875)``, bilinear.
    """
    pre = Preprocessing.from_dict(saved) if isinstance(saved, dict) else Preprocessing.default(image_size)
    if pre.input_size != image_size:
        pre = Preprocessing.from_dict(pre.to_dict() | {"input_size": image_size, "resize_size": None})
    if resize_size is not None:
        pre = Preprocessing.from_dict(pre.to_dict() | {"resize_size": resize_size})
    return pre


_RESIZES = {
    "center": "short side resized to resize_size",
    "squash": "squashed to resize_size x resize_size",
    "border": "long side resized to resize_size",
}


def _describe_preprocessing(rotation: dict[str, Any] | None, pre: Preprocessing) -> str:
    """The ``preprocessing`` text of the metadata: what :mod:`lit_transfer.inference` does to an image."""
    start = "EXIF orientation applied, RGB (16-bit rescaled, transparency on white), "
    end = "; uint8 in, normalization is in the model"
    if rotation is None:
        crop = "center crop of image_size" + (" (padded with the mean colour)" if pre.crop_mode == "border" else "")
        return start + f"{_RESIZES[pre.crop_mode]} ({pre.interpolation}, antialiased), {crop}" + end
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
