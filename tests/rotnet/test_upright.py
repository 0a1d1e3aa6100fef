"""Auto-upright: predictions.csv with angles, and images turned back by the predicted angle, whole, same format."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from rotnet_images import asymmetric_image

from lit_transfer.callbacks.upright import RotationPredictionWriter, rotate_upright, write_upright_image
from lit_transfer.data.rotnet import rotation_class_names

NAMES = [f"{45 * k}°" for k in range(8)]


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_right_angles_are_undone_exactly(turns: int) -> None:
    upright = Image.fromarray(asymmetric_image())
    rotated = upright.rotate(90 * turns, expand=True)  # a photo taken sideways: counter-clockwise by 90° k
    restored = rotate_upright(rotated, 90 * turns)
    assert restored.size == upright.size and np.array_equal(as_array(restored), as_array(upright))


def test_45_degrees_is_undone_on_an_expanded_canvas() -> None:
    upright = Image.fromarray(asymmetric_image())
    rotated = upright.rotate(45, resample=Image.Resampling.BICUBIC, expand=True)
    restored = rotate_upright(rotated, 45)
    assert restored.width >= upright.width and restored.height >= upright.height  # nothing cut off
    left, top = (restored.width - upright.width) // 2, (restored.height - upright.height) // 2
    middle = as_array(restored)[top + 12 : top + upright.height - 12, left + 12 : left + upright.width - 12]
    assert np.abs(middle - as_array(upright)[12:-12, 12:-12]).mean() < 3
    wrong = as_array(rotate_upright(rotated, 315))  # turning the other way does not restore it
    assert np.abs(wrong[top + 12 : top + upright.height - 12, left + 12 : left + upright.width - 12]
                  - as_array(upright)[12:-12, 12:-12]).mean() > 10  # fmt: skip


def test_formats_modes_and_exif_are_kept(tmp_path: Path) -> None:
    rgb = Image.fromarray(asymmetric_image())
    rgb.save(tmp_path / "photo.jpg", quality=95)
    rgba = rgb.convert("RGBA")
    rgba.save(tmp_path / "logo.png")
    rgb.convert("L").save(tmp_path / "scan.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers (and the model, through exif_transpose) turn it 90° clockwise
    rgb.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    for name, angle in [("photo.jpg", 90), ("logo.png", 45), ("scan.tif", 180), ("phone.jpg", 0)]:
        write_upright_image(tmp_path / name, out / name, angle)
    with Image.open(out / "photo.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 80)
    with Image.open(out / "logo.png") as img:
        assert img.format == "PNG" and img.mode == "RGBA" and img.getpixel((0, 0))[3] == 0  # transparent corners
    with Image.open(out / "scan.tif") as img:
        assert img.format == "TIFF" and img.mode == "L" and img.size == (80, 64)
    with Image.open(out / "phone.jpg") as img:  # the EXIF turn applied once and the tag gone
        assert img.size == (64, 80) and img.getexif().get(0x0112, 1) == 1


def test_writer_writes_csv_and_upright_images(tmp_path: Path) -> None:
    photos, upright = tmp_path / "photos", tmp_path / "upright"
    (photos / "sub").mkdir(parents=True)
    original = Image.fromarray(asymmetric_image())
    original.rotate(90, expand=True).save(photos / "a.png")  # counter-clockwise 90°
    original.rotate(270, expand=True).save(photos / "sub" / "b.png")  # counter-clockwise 270°
    probs = torch.full((2, 8), 0.02)
    probs[0, 2], probs[1, 6] = 0.86, 0.86  # classes 90° and 270°
    trainer = SimpleNamespace(
        is_global_zero=True,
        world_size=1,
        logger=SimpleNamespace(log_dir=str(tmp_path / "run")),
        datamodule=SimpleNamespace(predict_paths=["a.png", "sub/b.png"], predict_dir=str(photos), write_upright=None),
    )
    module = SimpleNamespace(class_names=NAMES, hparams=SimpleNamespace(top_k=5))
    writer = RotationPredictionWriter(write_upright=str(upright))
    writer.write_on_epoch_end(trainer, module, [{"probs": probs[[1]], "index": torch.tensor([1])},  # type: ignore[arg-type]
                                                {"probs": probs[[0]], "index": torch.tensor([0])}], None)  # fmt: skip
    with open(tmp_path / "run" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(photos / "a.png"), str(photos / "sub" / "b.png")]
    assert [r["angle"] for r in rows] == ["90", "270"] and rows[0]["confidence"] == "0.860000"
    assert list(rows[0])[3:] == [f"p_{45 * k}" for k in range(8)] + ["upright"]
    for rel in ("a.png", "sub/b.png"):
        with Image.open(upright / rel) as img:
            assert np.array_equal(as_array(img), as_array(original))  # restored exactly
    # the data module's write_upright is used when the writer has none
    trainer.datamodule.write_upright = str(tmp_path / "from_data")
    outputs = [{"probs": probs, "index": torch.tensor([0, 1])}]
    RotationPredictionWriter().write_on_epoch_end(trainer, module, outputs, None)  # type: ignore[arg-type]
    assert (tmp_path / "from_data" / "sub" / "b.png").is_file()


def test_binned_predictions_turn_photos_upright_by_the_bins_centre(tmp_path: Path) -> None:
    """With ``angle_mode: binned`` (the fixer's config) a photo turned by 45° k is class k, undone by 45° k."""
    photos, upright = tmp_path / "photos", tmp_path / "upright"
    photos.mkdir()
    original = Image.fromarray(asymmetric_image())
    for k in range(8):  # counter-clockwise by 45° k; multiples of 90° are exact transposes in Pillow
        original.rotate(45 * k, resample=Image.Resampling.BICUBIC, expand=True).save(photos / f"k{k}.png")
    probs = torch.full((8, 8), 0.01)
    for k in range(8):
        probs[k, k] = 0.93  # a perfect binned model: bin k holds 45° k (test_rotnet_data checks the binning)
    trainer = SimpleNamespace(
        is_global_zero=True,
        world_size=1,
        logger=SimpleNamespace(log_dir=str(tmp_path / "run")),
        datamodule=SimpleNamespace(predict_paths=[f"k{k}.png" for k in range(8)], predict_dir=str(photos),
                                   write_upright=str(upright)),
    )  # fmt: skip
    module = SimpleNamespace(class_names=rotation_class_names(8, "binned"), hparams=SimpleNamespace(top_k=5))
    outputs = [{"probs": probs, "index": torch.arange(8)}]
    RotationPredictionWriter().write_on_epoch_end(trainer, module, outputs, None)  # type: ignore[arg-type]
    margin = 12  # the 45° views: bicubic twice; compare the middle, away from the new corners
    for k in range(8):
        with Image.open(upright / f"k{k}.png") as img:
            restored = as_array(img)
        if k % 2 == 0:
            assert np.array_equal(restored, as_array(original)), k  # lossless
            continue
        top, left = (restored.shape[0] - original.height) // 2, (restored.shape[1] - original.width) // 2
        middle = restored[top + margin : top + original.height - margin, left + margin : left + original.width - margin]
        error = np.abs(middle - as_array(original)[margin:-margin, margin:-margin]).mean()
        assert error < 2, f"{45 * k}°: {error:.2f} grey levels from upright"  # measured 0.77 (22.5° off: 15.5)
    with open(tmp_path / "run" / "predictions.csv") as f:
        assert [r["angle"] for r in csv.DictReader(f)] == [f"{45 * k}" for k in range(8)]


@pytest.mark.parametrize("where", ["same", "parent", "inside", "foreign"])
def test_write_upright_never_touches_the_users_images(
    where: str, unlabeled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The upright folder may not be predict_dir, above it, inside it, or a folder of someone else's files."""
    from lit_transfer.cli import main

    photos = tmp_path / "album/photos"
    photos.mkdir(parents=True)
    Image.fromarray(asymmetric_image(32, 40)).save(photos / "a.png")
    (tmp_path / "album/a.png").write_bytes(b"an unrelated original")  # what a parent target would overwrite
    target = {"same": photos, "parent": tmp_path / "album", "inside": photos / "up", "foreign": tmp_path / "mine"}[
        where
    ]
    if where == "foreign":
        target.mkdir()
        (target / "thesis.tex").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--data", "lit_transfer.data.rotnet.RotNetDataModule", "--data.root", str(unlabeled),
              "--data.predict_dir", str(photos), "--data.write_upright", str(target), "--model",
              "lit_transfer.models.rotnet.RotNetClassifier", "--model.backbone", "smallcnn",
              "--ckpt_path", str(tmp_path / "none.ckpt")])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "data.write_upright" in err
    assert (tmp_path / "album/a.png").read_bytes() == b"an unrelated original"
    assert not (photos / "up").exists()


def test_a_folder_written_by_the_upright_writer_may_be_written_again(unlabeled: Path, tmp_path: Path) -> None:
    from lit_transfer.data.rotnet import UPRIGHT_MARKER, RotNetDataModule

    out = tmp_path / "upright"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier upright copy")
    (out / UPRIGHT_MARKER).touch()
    RotNetDataModule(root=str(unlabeled), predict_dir=str(unlabeled), write_upright=str(out))  # accepted
