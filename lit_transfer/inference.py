"""Predict with an exported lit_transfer model: image files in, ranked class names out.

Self-contained on purpose: it imports numpy and Pillow, plus onnxruntime (ONNX files) or torch (TorchScript files)
only when a model is loaded, and nothing from lit_transfer or Lightning. Copy it beside a ``.onnx`` file to serve
the model anywhere onnxruntime runs; within the package, ``from lit_transfer.inference import load_exported`` works
too (but ``import lit_transfer`` itself loads Lightning).

Preprocessing is read from the exported file's metadata and mirrors lit_transfer's evaluation pipeline: EXIF
orientation, RGB conversion (16-bit rescaled, transparency composited on white), short side resized to
``resize_size`` (with the weights' ``interpolation``, antialiased, as torchvision), center crop of ``image_size``;
``crop_mode`` ``squash`` resizes both sides to ``resize_size`` and ``border`` the long side, padding the crop with
the mean colour (timm's crop modes). The model normalizes itself.
A RotNet export records its data module's ``predict`` view instead, and :func:`preprocess` rebuilds it: JPEGs
decoded at a reduced size (``decode_min_side``), the ``resize_size`` source square (``square``: ``crop`` or
``resize``), the low-pass of the ``safe`` geometry (``low_pass``, with ``numpy.fft``), center crop of ``image_size``.

    predictor = load_exported("last.onnx")
    predictor.predict(["cat.jpg", "dog.png"], top_k=3)
    # [{"path": "cat.jpg", "prediction": "cat", "index": 0, "confidence": 0.93, "top_k": [...]}, ...]

``python lit_transfer/inference.py MODEL IMAGE... [--top_k K]`` prints one JSON object per image.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

ImageInput = str | os.PathLike | Image.Image
TORCHSCRIPT_METADATA_FILE = "metadata.json"
PROBABILITIES = "probabilities"
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)


# --------------------------------------------------------------------------- images (as lit_transfer.data.images)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: 16/32-bit rescaled to 8 bits, float scaled from its range, alpha composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
        else:
            lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "L", "RGB") and "transparency" in img.info:  # palette index or colour key (tRNS)
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode == "P":
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        return img
    if mode in ("LA", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_image(image: ImageInput, min_side: int | None = None) -> Image.Image:
    """A path or PIL image → upright (EXIF orientation applied), decoded RGB image.

    With ``min_side``, a JPEG file whose shorter side is at least twice that is decoded at the reduced size (1/2, 1/4
    or 1/8, inside the decoder) whose shorter side is still at least ``min_side``, as lit_transfer's loader does.
    Files above Pillow's ``MAX_IMAGE_PIXELS`` are refused before decoding (decompression bombs).
    """
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    with Image.open(image) as img:
        width, height = img.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise Image.DecompressionBombError(f"{width}x{height} pixels exceeds the limit of {limit}")
        if min_side is not None and img.format == "JPEG" and min(width, height) >= 2 * min_side:
            scale = min_side / min(width, height)
            img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        img = ImageOps.exif_transpose(img)
        img.load()
        return to_rgb(img)


RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _resample(interpolation: str) -> Image.Resampling:
    if interpolation not in RESAMPLING:
        raise ValueError(f"unknown interpolation {interpolation!r} in the model's metadata: use {sorted(RESAMPLING)}")
    return RESAMPLING[interpolation]


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the short side is ``size`` (the long side truncated, as torchvision's ``Resize(int)``)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _resample(interpolation))


def resize_long_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the long side is ``size``, the short side rounded (timm's ``ResizeKeepRatio(longest=1)``)."""
    w, h = img.size
    ratio = max(w, h) / size
    new_w, new_h = round(w / ratio), round(h / ratio)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _resample(interpolation))


def center_crop(img: Image.Image, size: int, fill: tuple[int, ...] = (0, 0, 0)) -> Image.Image:
    """The central ``size`` square, padded with ``fill`` first where the image is smaller (``CenterCrop``)."""
    w, h = img.size
    if w < size or h < size:
        padded = Image.new(img.mode, (max(w, size), max(h, size)), fill)
        padded.paste(img, ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0))
        img, (w, h) = padded, padded.size
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def band_limit(x: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Isotropic raised-cosine low-pass of ``(..., H, W)`` float images: flat below ``inner``, zero from ``outer``.

    In fractions of the Nyquist frequency, periodic (pad first), as lit_transfer's rotation module filters.
    """
    height, width = x.shape[-2:]
    fy = np.fft.fftfreq(height)[:, None] * 2
    fx = np.fft.rfftfreq(width)[None, :] * 2
    t = np.clip((np.sqrt(fx**2 + fy**2) - inner) / (outer - inner), 0.0, 1.0)
    window = 0.5 * (1.0 + np.cos(np.pi * t))
    return np.fft.irfft2(np.fft.rfft2(x) * window, s=(height, width))


def low_pass_crop(square: np.ndarray, image_size: int, low_pass: dict[str, Any]) -> np.ndarray:
    """A ``uint8`` ``(3, S, S)`` source → reflect-padded, low-passed, rounded, central ``image_size`` crop (RotNet)."""
    pad = int(low_pass["pad"])
    padded = np.pad(square.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    filtered = band_limit(padded, float(low_pass["inner"]), float(low_pass["outer"]))
    top = (filtered.shape[-1] - image_size) // 2  # the source and the crop share one centre (even difference)
    crop = filtered[:, top : top + image_size, top : top + image_size]
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def preprocess(
    image: ImageInput,
    resize_size: int,
    image_size: int,
    square: str | None = None,
    low_pass: dict[str, Any] | None = None,
    decode_min_side: int | None = None,
    interpolation: str = "bilinear",
    crop_mode: str = "center",
    fill: tuple[int, ...] = (0, 0, 0),
) -> np.ndarray:
    """One image → ``uint8`` array ``(3, image_size, image_size)``, as lit_transfer evaluates.

    ``square`` is ``None`` for a classifier: resized by ``crop_mode`` (``center``: short side to ``resize_size``;
    ``squash``: both sides; ``border``: long side, the crop padded with ``fill``) with ``interpolation``, then the
    center crop of ``image_size``. A RotNet model first makes the ``resize_size`` square source (``crop``: short side
    and center square; ``resize``: squashed), low-passes it when ``low_pass`` is given, and takes its central
    ``image_size`` square.
    """
    img = load_image(image, decode_min_side)
    if square is None:
        if crop_mode == "center":
            img = center_crop(resize_short_side(img, resize_size, interpolation), image_size)
        elif crop_mode == "squash":
            if img.size != (resize_size, resize_size):
                img = img.resize((resize_size, resize_size), _resample(interpolation))
            img = center_crop(img, image_size)
        elif crop_mode == "border":
            img = center_crop(resize_long_side(img, resize_size, interpolation), image_size, fill)
        else:
            raise ValueError(f"unknown crop_mode {crop_mode!r} in the model's metadata: use center, squash or border")
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    if square == "resize":
        if img.size != (resize_size, resize_size):
            img = img.resize((resize_size, resize_size), Image.Resampling.BILINEAR)
    elif square == "crop":
        img = center_crop(resize_short_side(img, resize_size), resize_size)
    else:
        raise ValueError(f"unknown square mode {square!r} in the model's metadata: use 'crop' or 'resize'")
    source = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    if low_pass is not None:
        return low_pass_crop(source, image_size, low_pass)
    top = (resize_size - image_size) // 2
    return source[:, top : top + image_size, top : top + image_size].copy()


# --------------------------------------------------------------------------- exported models


def _parse_metadata(raw: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            parsed[key] = json.loads(value)
        except (TypeError, ValueError):
            parsed[key] = value  # a property someone else added as plain text
    return parsed


def _onnx_runner(path: Path, providers: Sequence[str] | None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
    metadata = _parse_metadata(dict(session.get_modelmeta().custom_metadata_map))
    input_name = metadata.get("input", {}).get("name") or session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = PROBABILITIES if PROBABILITIES in outputs else outputs[-1]

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run([output], {input_name: batch})[0]

    return run, metadata


def _torchscript_runner(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    import torch

    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated.*")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    text = extra[TORCHSCRIPT_METADATA_FILE]
    metadata = json.loads(text) if text else {}
    module.eval()
    temperature = float(metadata.get("temperature") or 1.0)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(batch))
        # the probabilities output is calibrated already; a module that returns logits only is divided here
        probs = out[-1] if isinstance(out, (tuple, list)) else (out / temperature).softmax(dim=1)
        return probs.numpy()

    return run, metadata


class Predictor:
    """An exported model with its preprocessing: :meth:`predict` on image files or PIL images.

    Attributes:
        path: the exported file.
        metadata: everything the export stored (class names, sizes, mean/std, angles, provenance).
        class_names: class names in output order.
        image_size: side of the square model input.
        resize_size: short side images are resized to before the center crop (RotNet: the source square's side).
        interpolation: the resize's ``bilinear``, ``bicubic`` or ``nearest`` (older exports: ``bilinear``).
        crop_mode: ``center``, ``squash`` or ``border`` (older exports: ``center``).
        class_angles: each class's angle in degrees for a RotNet model, else ``None``.
        square: RotNet's ``crop`` or ``resize`` source square, ``None`` for a classifier.
        low_pass: RotNet's low-pass of the source (``inner``, ``outer``, ``pad``), or ``None``.
        decode_min_side: shorter side large JPEGs may be decoded down to, or ``None`` (always decoded in full).
        temperature: the model's temperature: its probabilities are ``softmax(logits / temperature)`` (1 unless it
            was calibrated; older exports: 1).
    """

    def __init__(self, path: str | os.PathLike, run: Callable[[np.ndarray], np.ndarray], metadata: dict) -> None:
        missing = [k for k in ("class_names", "image_size", "resize_size") if k not in metadata]
        if missing:
            raise ValueError(f"{str(path)!r} is not a lit_transfer export: its metadata lacks {', '.join(missing)}")
        self.path = Path(path)
        self.metadata = metadata
        self.class_names: list[str] = [str(n) for n in metadata["class_names"]]
        self.image_size = int(metadata["image_size"])
        self.resize_size = int(metadata["resize_size"])
        self.interpolation = str(metadata.get("interpolation") or "bilinear")
        self.crop_mode = str(metadata.get("crop_mode") or "center")
        mean = metadata.get("mean") or [0.0, 0.0, 0.0]
        self._fill = tuple(round(255 * float(m)) for m in mean)
        angles = metadata.get("class_angles")
        self.class_angles: list[float] | None = [float(a) for a in angles] if angles is not None else None
        self.square: str | None = metadata.get("square")
        self.low_pass: dict[str, Any] | None = metadata.get("low_pass")
        min_side = metadata.get("decode_min_side")
        self.decode_min_side: int | None = int(min_side) if min_side is not None else None
        self.temperature = float(metadata.get("temperature") or 1.0)
        self._run = run

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """One image → the model's ``uint8`` input ``(3, image_size, image_size)``."""
        return preprocess(
            image,
            self.resize_size,
            self.image_size,
            self.square,
            self.low_pass,
            self.decode_min_side,
            self.interpolation,
            self.crop_mode,
            self._fill,
        )

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` of a preprocessed ``uint8`` batch ``(N, 3, H, W)``."""
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.uint8)), dtype=np.float32)

    def predict(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Ranked predictions for image files or PIL images (one dict per image, in order).

        Each dict has ``path`` (``None`` for a PIL image), ``prediction`` (class name), ``index``, ``confidence``
        and ``top_k`` (``[{"class", "index", "probability"}, …]``, best first); a RotNet model adds ``angle``, the
        predicted rotation in degrees counter-clockwise (rotate the image back by it to make it upright).
        """
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        items = list(images)
        k = max(1, min(int(top_k), len(self.class_names)))
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + max(1, batch_size)]
            probs = self.predict_batch(np.stack([self.preprocess(image) for image in chunk]))
            for image, row in zip(chunk, probs, strict=True):
                order = np.argsort(-row, kind="stable")[:k]
                best = int(order[0])
                result: dict[str, Any] = {
                    "path": None if isinstance(image, Image.Image) else os.fspath(image),
                    "prediction": self.class_names[best],
                    "index": best,
                    "confidence": float(row[best]),
                    "top_k": [
                        {"class": self.class_names[int(i)], "index": int(i), "probability": float(row[i])}
                        for i in order
                    ],
                }
                if self.class_angles is not None:
                    result["angle"] = self.class_angles[best]
                results.append(result)
        return results


def load_exported(path: str | os.PathLike, providers: Sequence[str] | None = None) -> Predictor:
    """Load an exported model: ONNX through onnxruntime, TorchScript (a zip archive) through ``torch.jit.load``.

    Args:
        path: a file written by ``lit_transfer export``.
        providers: onnxruntime execution providers (default CPU), e.g. ``["CUDAExecutionProvider"]``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a lit_transfer export.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    try:
        run, metadata = _torchscript_runner(path) if zipfile.is_zipfile(path) else _onnx_runner(path, providers)
    except ImportError:
        raise
    except Exception as err:  # onnxruntime and torch.jit raise their own types for files that are no model
        raise ValueError(f"{str(path)!r} is not an ONNX or TorchScript model: {type(err).__name__}: {err}") from err
    return Predictor(path, run, metadata)


def main(argv: Sequence[str] | None = None) -> None:
    """``python inference.py MODEL IMAGE... [--top_k K]``: one JSON line per image."""
    import argparse

    parser = argparse.ArgumentParser(description="Predict with an exported lit_transfer model.")
    parser.add_argument("model", help="a .onnx or TorchScript file written by lit_transfer export")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top_k", type=int, default=5, help="ranked classes per image (default 5)")
    args = parser.parse_args(argv)
    predictor = load_exported(args.model)
    for result in predictor.predict(args.images, top_k=args.top_k):
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
