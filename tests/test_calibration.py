"""Calibration: val_ece and the reliability bins against NumPy, temperature fitting, ``--calibrate temperature``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import run_dir, tiny_args

from lit_transfer.callbacks.calibration import RELIABILITY_BINS, LogitStore, ReliabilityBins, reliability
from lit_transfer.callbacks.layout import scalar_charts
from lit_transfer.callbacks.report_drawing import CARD_WIDTH, render_reliability_diagram
from lit_transfer.cli import main
from lit_transfer.core.metric_names import logged_names
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.export import export_checkpoint, rebuild_model
from lit_transfer.inference import load_exported
from lit_transfer.models import TransferClassifier
from lit_transfer.models import metrics as metrics_module
from lit_transfer.models.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    SoftmaxCalibrationError,
    calibrate,
    expected_calibration_error,
    fit_temperature,
)
from lit_transfer.models.rotnet import RotNetClassifier


def numpy_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE as torchmetrics bins it: ``[i/n, (i+1)/n)`` on float32 edges, and a bin of its own for confidence 1."""
    probs = probs.astype(np.float32)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.searchsorted(np.linspace(0, 1, n_bins + 1, dtype=np.float32), confidence, side="right") - 1
    ece = 0.0
    for b in range(n_bins + 1):
        inside = index == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].astype(np.float64).mean())
    return float(ece)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def spread_logits(n: int = 600, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits over the whole confidence range, some confident to exactly 1.0 in float32, with their labels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * torch.rand(n, 1, generator=g) * 6
    logits[:20, 0] = 120.0  # softmax exactly 1.0: the bin of its own
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[: n // 2] = logits[: n // 2].argmax(dim=1)  # half right at least, so accuracy varies by bin
    return logits, labels


# --- the ECE and the reliability bins --------------------------------------------------------------------------------


def test_ece_metric_and_reliability_bins_match_numpy() -> None:
    logits, labels = spread_logits()
    probs = logits.softmax(dim=1)
    assert (probs.max(dim=1).values == 1.0).sum() >= 20
    expected = numpy_ece(probs.numpy(), labels.numpy())
    metric = SoftmaxCalibrationError(4, n_bins=15, validate_args=False)
    for part in range(0, len(labels), 128):  # several updates, as the buffered flushes make them
        metric.update(logits[part : part + 128], labels[part : part + 128])
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-6)
    bins = ReliabilityBins()
    bins.update(probs[:300], labels[:300])
    bins.update(probs[300:], labels[300:])
    rel = reliability(bins.compute())
    assert rel.ece == pytest.approx(expected, abs=1e-5) and rel.total == len(labels)
    confidence = probs.max(dim=1).values.numpy()
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1, dtype=np.float32)
    index = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, RELIABILITY_BINS - 1)
    right = (probs.argmax(dim=1) == labels).numpy()
    for b in range(RELIABILITY_BINS):
        inside = index == b
        assert rel.counts[b] == inside.sum()
        if inside.any():
            assert rel.accuracy[b] == pytest.approx(right[inside].mean(), abs=1e-6)
            assert rel.confidence[b] == pytest.approx(confidence[inside].mean(), abs=1e-5)


def test_small_logits_are_taken_for_logits() -> None:
    """torchmetrics alone takes inputs inside [0, 1] for probabilities; val_ece must not."""
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.rand(64, 3, generator=g), torch.randint(0, 3, (64,), generator=g)
    metric = SoftmaxCalibrationError(3, n_bins=15, validate_args=False)
    metric.update(logits, labels)
    assert float(metric.compute()) == pytest.approx(numpy_ece(softmax(logits.numpy()), labels.numpy()), abs=1e-6)


def test_logit_store_keeps_every_row() -> None:
    store = LogitStore()
    assert store.compute()[0].shape == (0, 0)
    logits, labels = spread_logits(10, 3)
    store.update(logits[:4], labels[:4])
    store.update(logits[4:], labels[4:])
    kept, targets = store.compute()
    assert torch.equal(kept, logits) and torch.equal(targets, labels)


def test_val_ece_over_buffered_batches_matches_numpy_and_follows_the_temperature(
    tree_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "METRIC_FLUSH_BATCHES", 4)  # several flushes of a few batches
    root = tree_factory("data", per_class=8)
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=1, num_workers=0, val_fraction=0.5)
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    raw = trainer.validate(model, datamodule=data, verbose=False)[0]
    images = torch.stack([data._datasets["val"][i][0] for i in range(len(data._datasets["val"]))])
    labels = np.array(data._datasets["val"].targets)
    assert len(labels) > 2 * metrics_module.METRIC_FLUSH_BATCHES and len(labels) % 4  # flushes, the last one short
    model.eval()
    with torch.no_grad():
        logits = model(images).numpy()
    assert raw["val_ece"] == pytest.approx(numpy_ece(softmax(logits), labels), abs=1e-5)
    model.temperature.fill_(0.25)
    scaled = trainer.validate(model, datamodule=data, verbose=False)[0]
    assert scaled["val_ece"] == pytest.approx(numpy_ece(softmax(logits / 0.25), labels), abs=1e-5)
    assert scaled["val_ece"] != pytest.approx(raw["val_ece"], abs=1e-4)
    assert scaled["val_loss"] == raw["val_loss"] and scaled["val_acc"] == raw["val_acc"]  # only probabilities move


def test_rotnet_metrics_keep_the_ece() -> None:
    model = RotNetClassifier(num_classes=4, class_names=["0°", "90°", "180°", "270°"], backbone="smallcnn")
    model.add_rotation_metrics()
    collection = model.metrics["val_metrics"]
    logits, labels = spread_logits(80, 4)
    collection.update(logits, labels)
    computed = {k: float(v) for k, v in collection.compute().items()}
    assert {"val_ece", "val_angle_error", "val_parity_acc", "val_acc"} <= set(computed)
    assert computed["val_ece"] == pytest.approx(numpy_ece(softmax(logits.numpy()), labels.numpy()), abs=1e-6)
    train = logged_names(model.metrics["train_metrics"])
    assert "train_acc" in train and "train_ece" not in train


def test_reliability_diagram_and_layout() -> None:
    logits, labels = spread_logits()
    bins = ReliabilityBins()
    bins.update(logits.softmax(dim=1), labels)
    image = render_reliability_diagram(reliability(bins.compute()))
    assert image.width == CARD_WIDTH and 150 < image.height < CARD_WIDTH
    pixels = np.asarray(image)
    assert (pixels == (70, 110, 180)).all(axis=2).sum() > 500  # accuracy bars drawn
    empty = render_reliability_diagram(reliability(torch.zeros(3, RELIABILITY_BINS + 1)))
    assert empty.width == CARD_WIDTH
    charts = scalar_charts({"val_loss", "val_acc", "val_ece"}, learning_rates=False)
    (regex,) = charts["calibration error (ECE)"][1]
    assert regex == r"^(train|val)_ece$"


# --- fitting the temperature -----------------------------------------------------------------------------------------


def test_fit_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.randn(20000, 5, generator=g) * 2.0
    labels = torch.multinomial(true.softmax(dim=1), 1, generator=g).squeeze(1)
    for t0 in (0.4, 2.5):  # logits too confident (÷0.4) and not confident enough (÷2.5)
        observed = true / t0
        assert fit_temperature(observed, labels) == pytest.approx(1 / t0, rel=0.05)
    result = calibrate(true / 0.4, labels)
    assert result.temperature == pytest.approx(2.5, rel=0.05) and result.samples == 20000
    assert result.ece_after < result.ece_before and result.nll_after < result.nll_before
    assert result.nll_after == pytest.approx(F.cross_entropy(true, labels).item(), abs=2e-3)
    assert not result.separable


def test_fit_temperature_stays_bounded_and_checks_its_input() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 8)
    labels = torch.tensor([0, 1] * 8)
    t = fit_temperature(logits, labels)  # separable: no finite optimum
    assert MIN_TEMPERATURE <= t < 1.0 and calibrate(logits, labels).separable
    assert fit_temperature(-logits, labels) == pytest.approx(MAX_TEMPERATURE)  # all wrong: as flat as allowed
    with pytest.raises(ValueError, match="no validation samples"):
        fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(logits, labels[:3])


# --- the command line ------------------------------------------------------------------------------------------------


def _val_logits(model: TransferClassifier, root: Path, manifest: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw logits on the run's validation split (the same split, rebuilt from the same settings)."""
    data = ImageFolderDataModule(
        root=str(root), image_size=32, batch_size=8, num_workers=0, test_fraction=0.25, val_fraction=0.25
    )
    data.setup("fit")
    val = data._datasets["val"]
    with open(manifest) as f:
        expected = sorted(r["path"] for r in csv.DictReader(f) if r["split"] == "val")
    assert sorted(val.paths) == expected
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        return model.eval()(images).numpy(), np.array(val.targets)


def _predict_images(root: Path, photos: Path) -> torch.Tensor:
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=8, num_workers=0, predict_dir=str(photos))
    data.setup("predict")
    return torch.cat([batch[0] for batch in data.predict_dataloader()])


def _photos(root: Path, folder: Path) -> Path:
    folder.mkdir()
    for i, name in enumerate(["red/img_000.png", "green/img_001.png", "blue/img_002.png", "red/img_005.png"]):
        (folder / f"p{i}.png").write_bytes((root / name).read_bytes())
    return folder


def _csv_probs(path: Path, names: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    with open(path) as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    return np.array([[float(r[f"top{k}_prob"]) for k in range(1, 4)] for r in rows]), [
        [names.index(r[f"top{k}"]) for k in range(1, 4)] for r in rows
    ]


def test_calibrate_temperature_writes_the_best_checkpoint_and_predict_and_export_use_it(
    image_tree: Path, in_tmp: Path, tmp_path: Path
) -> None:
    main(["fit", *tiny_args(image_tree, "--calibrate", "temperature", "--test_after_fit", "true", epochs=2)])
    run = run_dir(in_tmp)
    folder = run / "checkpoints"
    best = folder / "best.ckpt"
    (epoch_file,) = [p for p in folder.glob("epoch*.ckpt")]
    assert os.path.samefile(best, epoch_file)  # the alias follows the rewritten file
    ckpt = torch.load(best, weights_only=True)
    t = float(ckpt["state_dict"]["temperature"])
    info = ckpt["lit_transfer"]
    assert t != 1.0 and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
    assert (
        info["temperature"] == pytest.approx(t, abs=1e-7) and info["calibration"]["temperature"] == info["temperature"]
    )
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert float(last["state_dict"]["temperature"]) == 1.0 and last["lit_transfer"]["temperature"] == 1.0
    # the recorded figures are those of the checkpoint's own validation logits, before and after T
    model = rebuild_model(ckpt)
    assert float(model.temperature) == t
    logits, labels = _val_logits(model, image_tree, run / "split_manifest.csv")
    cal = info["calibration"]
    assert cal["samples"] == len(labels)
    assert cal["ece_before"] == pytest.approx(numpy_ece(softmax(logits), labels), abs=1e-5)
    assert cal["ece_after"] == pytest.approx(numpy_ece(softmax(logits / t), labels), abs=1e-5)
    nll = -np.log(softmax(logits / t)[np.arange(len(labels)), labels]).mean()
    assert cal["nll_after"] == pytest.approx(nll, abs=1e-5)
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["calibration"]["temperature"] == info["temperature"] and summary["test_acc"] is not None
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"calibration/temperature", "calibration/ece_before", "calibration/ece_after", "val_ece"} <= scalars
    assert events.Scalars("calibration/temperature")[-1].value == pytest.approx(t, rel=1e-6)
    assert "test_ece" in scalars
    val_steps = [s.step for s in events.Scalars("val_acc")]
    assert len(val_steps) == 2  # the calibration's validation run logged nothing
    reported = [e.step for e in events.Images("reports/confusion_matrix")]
    assert [e.step for e in events.Images("reports/reliability_diagram")] == reported and len(reported) == 2
    # predict: the calibrated probabilities
    photos = _photos(image_tree, tmp_path / "photos")
    main(["predict", *tiny_args(image_tree), "--ckpt_path", str(best), "--data.predict_dir", str(photos)])
    probs, order = _csv_probs(run / "predict_0" / "predictions.csv", model.class_names)
    images = _predict_images(image_tree, photos)
    with torch.no_grad():
        want = softmax(model(images).numpy() / t)
    assert np.abs(np.take_along_axis(want, np.array(order), axis=1) - probs).max() < 2e-6
    # the export: calibrated probabilities, raw logits, the temperature in its metadata
    for fmt in ("onnx", "torchscript"):
        result = export_checkpoint(best, fmt, out=tmp_path / f"model.{fmt}", batch_sizes=(2,))
        assert result.passed and result.metadata["temperature"] == pytest.approx(t, abs=1e-7)
        predictor = load_exported(result.path)
        assert predictor.temperature == pytest.approx(t, abs=1e-7)
        assert np.abs(predictor.predict_batch(images.numpy()) - want).max() < 1e-5


def test_without_calibrate_the_temperature_is_one_and_old_checkpoints_load(
    image_tree: Path, in_tmp: Path, tmp_path: Path
) -> None:
    main(["fit", *tiny_args(image_tree, epochs=1)])
    run = run_dir(in_tmp)
    for path in (run / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        assert float(ckpt["state_dict"]["temperature"]) == 1.0 and ckpt["lit_transfer"]["temperature"] == 1.0
        assert "calibration" not in ckpt["lit_transfer"]
    events = EventAccumulator(str(run))
    events.Reload()
    assert not any(t.startswith("calibration/") for t in events.Tags()["scalars"])
    assert "calibration" not in json.loads((run / "run_summary.json").read_text())
    # a checkpoint from before calibration existed: no temperature anywhere
    old = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    del old["state_dict"]["temperature"], old["lit_transfer"]["temperature"]
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    model = rebuild_model(torch.load(old_path, weights_only=True))
    assert float(model.temperature) == 1.0
    photos = _photos(image_tree, tmp_path / "photos")
    main(["predict", *tiny_args(image_tree), "--ckpt_path", str(old_path), "--data.predict_dir", str(photos)])
    (csv_path,) = (in_tmp / "runs" / "tiny").glob("evaluations/predict_*/predictions.csv")
    probs, order = _csv_probs(csv_path, model.class_names)
    with torch.no_grad():
        want = softmax(model(_predict_images(image_tree, photos)).numpy())
    assert np.abs(np.take_along_axis(want, np.array(order), axis=1) - probs).max() < 2e-6


def test_a_fit_resumed_from_a_calibrated_checkpoint_resumes_exactly(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise OSError("no hard links here")

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", no_links)  # best.ckpt becomes a copy, which the calibration must rewrite too
        main(["fit", *tiny_args(image_tree, "--calibrate", "temperature", "--runs_dir", "split", epochs=1)])
    best = in_tmp / "split" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    (epoch_file,) = best.parent.glob("epoch*.ckpt")
    assert not os.path.samefile(best, epoch_file) and best.read_bytes() == epoch_file.read_bytes()
    assert float(torch.load(best, weights_only=True)["state_dict"]["temperature"]) != 1.0
    main(["fit", *tiny_args(image_tree, "--runs_dir", "split", "--ckpt_path", str(best), epochs=2)])
    main(["fit", *tiny_args(image_tree, "--runs_dir", "whole", epochs=2)])
    # (resumed from a checkpoint other than last.ckpt, Lightning names the new last checkpoint last-v1.ckpt)
    lasts = [torch.load(p, weights_only=True) for p in best.parent.glob("last*.ckpt")]
    (resumed,) = [c for c in lasts if c["epoch"] == 1]
    whole = torch.load(in_tmp / "whole" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 1
    a, b = resumed["state_dict"], whole["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, temperature (1) included
