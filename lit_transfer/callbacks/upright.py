"""RotNet predictions: ``predictions.csv`` with the predicted angle and distribution, and upright copies of images.

:class:`RotationPredictionWriter` is what :class:`~lit_transfer.models.rotnet.RotNetClassifier` returns from
``configure_callbacks``; being a :class:`PredictionWriter` it replaces the CLI's generic writer. The folder for
upright copies is the data module's ``write_upright`` argument, beside ``predict_dir`` (the writer's own
``write_upright`` argument wins when it is set, for use from Python):

    python -m lit_transfer predict --config X.yaml --ckpt_path CKPT --data.predict_dir scans/ --data.write_upright up/

It is a data argument rather than a model argument because LightningCLI replaces model arguments with the
checkpoint's hyperparameters when ``--ckpt_path`` is given, and rather than a ``trainer.callbacks`` entry because
that writer would run beside the CLI's default one, both writing ``predictions.csv``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageOps

from lit_transfer.callbacks.predictions import PREDICTIONS_NAME, PredictionWriter
from lit_transfer.core.angles import class_angles
from lit_transfer.core.run_folder import run_dir
from lit_transfer.data.rotnet import UPRIGHT_MARKER

# Exact, lossless turns for the multiples of 90° that undo a counter-clockwise rotation by that angle.
_UNDO_QUARTER_TURNS = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}


def _fill(mode: str) -> Any:
    """The background of the expanded canvas: transparent where the mode has alpha, else white."""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return (255,) * (len(mode) - 1) + (0,)
    if mode == "CMYK":
        return (0, 0, 0, 0)
    if mode in ("L", "P", "1"):
        return 255
    if mode in ("I", "I;16", "F"):
        return 65535 if mode.startswith("I") else 1.0
    return (255,) * len(mode)


def rotate_upright(image: Image.Image, angle: float) -> Image.Image:
    """Undo a counter-clockwise rotation by ``angle``: the whole image, on a canvas expanded to hold it.

    Multiples of 90° are exact transposes; other angles are bicubic (nearest for palette and bilevel images, which
    are converted to RGB(A) or L first so the new corners get a real background).
    """
    turns, rest = divmod(round(angle % 360, 6), 90)
    if rest == 0:
        turns = int(turns) % 4
        return image.copy() if turns == 0 else image.transpose(_UNDO_QUARTER_TURNS[turns])
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    return image.rotate(-angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_fill(image.mode))


def save_like(image: Image.Image, original: Image.Image, path: Path) -> None:
    """Save ``image`` to ``path`` in the format of ``original``, keeping its colour profile and resolution."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = original.format or None
    kwargs: dict[str, Any] = {}
    for key in ("icc_profile", "dpi"):
        if key in original.info:
            kwargs[key] = original.info[key]
    exif = image.getexif()
    if len(exif):
        kwargs["exif"] = exif  # orientation already applied and removed by exif_transpose
    if fmt == "JPEG":
        kwargs["quality"] = 95
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=fmt or path.suffix.lstrip(".").upper() or None, **kwargs)
    tmp.replace(path)


def write_upright_image(source: Path, target: Path, angle: float) -> None:
    """Read ``source`` (turned by its EXIF orientation, as the model saw it), undo ``angle`` and save to ``target``."""
    with Image.open(source) as original:
        turned = ImageOps.exif_transpose(original)
        turned.load()
        save_like(rotate_upright(turned, angle), original, target)


class RotationPredictionWriter(PredictionWriter):
    """``predictions.csv`` for rotation models, and optionally the images turned upright.

    Columns: ``path``, ``angle`` (the predicted counter-clockwise rotation in degrees), ``confidence``, one
    ``p_<angle>`` column per class (the whole distribution) and, when uprighting, ``upright`` (the written file).
    The angle is the predicted class's own (``k`` steps: in ``binned`` mode bins are centred on the multiples of the
    step), so a photo turned by ``k · 45°`` is written back exactly upright, losslessly for multiples of 90°.

    Args:
        filename: name of the CSV file in the run folder.
        write_upright: folder for upright copies (same relative paths, same format); ``None`` takes the data
            module's ``write_upright``, if any.
    """

    def __init__(self, filename: str = PREDICTIONS_NAME, write_upright: str | None = None) -> None:
        super().__init__(filename)
        self.write_upright = write_upright

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        """Write the CSV, and the upright images, once every batch is predicted (on rank 0, all ranks gathered)."""
        probs, index = self._gather(trainer, predictions)
        if not trainer.is_global_zero or probs is None or index is None:
            return
        names = list(getattr(pl_module, "class_names", [str(i) for i in range(probs.shape[1])]))
        angles = class_angles(names)
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        paths, root = datamodule.predict_paths, Path(datamodule.predict_dir)
        upright = self.write_upright or getattr(datamodule, "write_upright", None)
        confidence, predicted = probs.max(dim=1)
        out_dir = run_dir(trainer)
        if out_dir is None:
            rank_zero_warn(
                f"{self.filename} not written: this run has no run folder (fast_dev_run, or --trainer.logger false); "
                f"predict without them to get <runs_dir>/<experiment>/version_N/{self.filename}"
            )
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / self.filename
        tmp = target.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["path", "angle", "confidence", *(f"p_{a:g}" for a in angles), *(["upright"] if upright else [])]
            )
            for row in sorted(range(len(index)), key=lambda r: int(index[r])):
                rel = paths[int(index[row])]
                angle = angles[int(predicted[row])]
                cells: list[Any] = [os.path.join(str(root), rel), f"{angle:g}", f"{float(confidence[row]):.6f}"]
                cells += [f"{float(p):.6f}" for p in probs[row]]
                if upright:
                    Path(upright).mkdir(parents=True, exist_ok=True)
                    (Path(upright) / UPRIGHT_MARKER).touch()  # a later run may replace these copies, nothing else
                    written = Path(upright) / rel
                    write_upright_image(root / rel, written, angle)
                    cells.append(str(written))
                writer.writerow(cells)
        tmp.replace(target)
        done = f" and {len(index)} upright images to {upright}" if upright else ""
        rank_zero_info(f"wrote {len(index)} rotation predictions to {target}{done}")
