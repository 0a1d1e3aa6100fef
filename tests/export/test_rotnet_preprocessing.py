"""An exported RotNet model is fed what its data module fed it: the inference helper rebuilds the ``predict`` view.

For each geometry (``safe``: low-passed source, central crop; ``naive``: the image itself) and square mode (``crop``,
``resize``), a RotNet model is fitted through the CLI, exported, and :meth:`Predictor.preprocess` is compared with
the data module's predict batches on the same photos (non-square, smaller and larger than the source, a JPEG large
enough to be decoded at a reduced size, a greyscale PNG).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_transfer.data.rotnet import RotNetDataModule
from lit_transfer.export import export_checkpoint
from lit_transfer.inference import load_exported

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")


def write_photos(root: Path, seed: int = 0) -> Path:
    """Smooth shapes with noise, so the low-pass and the resampling both matter."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for name, (height, width) in [("wide.png", (45, 70)), ("tall.png", (130, 100)), ("big.jpg", (300, 260))]:
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        shapes = np.stack([200 * np.exp(-((x - 0.3) ** 2 + (y - 0.2) ** 2) / 0.02), 180 * (y > 0.5), 150 * x], -1)
        pixels = np.clip(shapes + 40 + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / name, **({"quality": 90} if name.endswith(".jpg") else {}))
    Image.fromarray(rng.integers(0, 256, (90, 90), dtype=np.uint8), "L").save(root / "grey.png")
    return root


def fit_rotnet(workdir: Path, photos: Path, geometry: str, square: str) -> Path:
    """One epoch of a smallcnn RotNet at 32 px through ``lit_transfer fit``; its ``last.ckpt``."""
    from lit_transfer.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["lit_transfer"])
        main([
            "fit", "--data", "lit_transfer.data.rotnet.RotNetDataModule", "--data.root", str(photos),
            "--data.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
            "--data.val_fraction", "0.25", "--data.geometry", geometry, "--data.square", square,
            "--model", "lit_transfer.models.rotnet.RotNetClassifier", "--model.backbone", "smallcnn",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--experiment", "rot",
        ])  # fmt: skip
    return workdir / "runs" / "rot" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("geometry", "square", "fmt"),
    [("safe", "crop", "onnx"), ("safe", "resize", "torchscript"), ("naive", "crop", "torchscript"),
     ("naive", "resize", "onnx")],
)  # fmt: skip
def test_inference_input_is_the_data_modules_predict_view(tmp_path: Path, geometry: str, square: str, fmt: str) -> None:
    photos = write_photos(tmp_path / "photos")
    result = export_checkpoint(fit_rotnet(tmp_path, photos, geometry, square), fmt, tmp_path / "export")  # type: ignore[arg-type]
    assert result.passed
    predictor = load_exported(result.path)

    dm = RotNetDataModule(
        root=str(photos), image_size=32, num_workers=0, geometry=geometry, square=square, predict_dir=str(photos)
    )  # type: ignore[arg-type]
    dm.setup("predict")
    views = {int(i): view.numpy() for batch in dm.predict_dataloader() for view, i in zip(*batch[:2], strict=True)}
    assert len(views) == 4
    for index, rel in enumerate(dm.predict_paths):
        got = predictor.preprocess(photos / rel).astype(np.int16)
        assert got.shape == views[index].shape == (3, 32, 32)
        diff = np.abs(got - views[index].astype(np.int16))
        # measured: max 1, on at most 2 % of the values (Pillow's and torchvision's uint8 resizes round apart)
        assert diff.max() <= 1 and diff.mean() < 0.05, f"{rel}: mean {diff.mean():.3f}, max {diff.max()}"
    meta = result.metadata  # the data module's settings, as RotNetClassifier stored them in the checkpoint
    assert meta["rotation"]["geometry"] == geometry and meta["square"] == square
    assert (meta["low_pass"] is None) == (geometry == "naive")
    assert meta["resize_size"] == meta["rotation"]["source_size"] == (62 if geometry == "safe" else 32)
