"""Feature cache: exactly the uncached results, invalidated by any change, safe fallbacks, atomic entries."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from lit_transfer.callbacks import FeatureCache, PredictionWriter
from lit_transfer.callbacks.reproducibility import EpochSeeder
from lit_transfer.cli import main
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.data.transforms import eval_transform, is_deterministic, train_transform
from lit_transfer.features import META_NAME, FeatureBatch
from lit_transfer.models import TransferClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def entries(cache: Path, split: str | None = None) -> list[Path]:
    if not cache.is_dir():
        return []
    return sorted(p for p in cache.iterdir() if p.is_dir() and (split is None or p.name.startswith(f"{split}-")))


def fit(
    root: Path,
    tmp_path: Path,
    cache: Path | None,
    epochs: int = 2,
    augmentation: str = "none",
    freeze: str = "backbone",
    backbone_seed: int = 0,
    image_size: int = 32,
    **model_args: object,
) -> tuple[TransferClassifier, pl.Trainer, ImageFolderDataModule]:
    torch.manual_seed(backbone_seed)
    model = TransferClassifier(
        num_classes=3, backbone="smallcnn", freeze=freeze, hidden_dims=[16], dropout=0.3, **model_args
    )
    data = ImageFolderDataModule(
        root=str(root), image_size=image_size, batch_size=4, num_workers=0, augmentation=augmentation,
        test_fraction=0.2,
    )  # fmt: skip
    callbacks: list[pl.Callback] = [EpochSeeder(0)]
    if cache is not None:
        callbacks.append(FeatureCache(dir=str(cache)))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    pl.seed_everything(0)
    trainer.fit(model, datamodule=data)
    return model, trainer, data


def test_cached_training_matches_recomputed_features_exactly(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    cache = tmp_path / "cache"
    plain, plain_trainer, _ = fit(root, tmp_path, None)
    cached, cached_trainer, data = fit(root, tmp_path, cache)
    assert [p.name.split("-")[0] for p in entries(cache)] == ["train", "val"]
    for name, value in plain.head.state_dict().items():  # dropout in the head: the same RNG draws too
        torch.testing.assert_close(cached.head.state_dict()[name], value, rtol=0, atol=1e-5)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        torch.testing.assert_close(cached_trainer.callback_metrics[key], plain_trainer.callback_metrics[key])
    # the loaders really serve features: one batch of the train loader is a FeatureBatch of backbone outputs
    assert data.dataset_wrapper is None  # the callback registers its hook in setup and removes it in teardown
    data.set_dataset_wrapper(cached_trainer.callbacks[-1].dataset_for)
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, FeatureBatch) and batch.features.shape == (4, 64)
    images = torch.stack([data._datasets["train"][i][0] for i in batch.indices.tolist()])
    torch.testing.assert_close(batch.features, cached.forward_features(images), rtol=1e-5, atol=1e-6)


def test_validate_test_and_predict_match_uncached(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    model, _, _ = fit(root, tmp_path, None, epochs=1)
    predict_dir = tree_factory("predict", per_class=2)

    def evaluate(cache: Path | None) -> tuple[list, list, list[list[str]]]:
        data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none",
                                     test_fraction=0.2, predict_dir=str(predict_dir))  # fmt: skip
        out = tmp_path / ("cached" if cache else "plain")
        callbacks: list[pl.Callback] = [PredictionWriter()]
        if cache is not None:
            callbacks.append(FeatureCache(dir=str(cache)))
        logger = pl.loggers.CSVLogger(out)
        trainer = pl.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, callbacks=callbacks)
        val = trainer.validate(model, datamodule=data, verbose=False)
        test = trainer.test(model, datamodule=data, verbose=False)
        trainer.predict(model, datamodule=data, return_predictions=False)
        with open(Path(logger.log_dir) / "predictions.csv", newline="") as f:
            rows = list(csv.reader(f))
        return val, test, rows

    cache = tmp_path / "cache"
    plain = evaluate(None)
    cached = evaluate(cache)
    assert {p.name.split("-")[0] for p in entries(cache)} == {"val", "test", "predict"}
    for a, b in zip(plain[:2], cached[:2], strict=True):
        assert a[0].keys() == b[0].keys()
        for key in a[0]:
            assert a[0][key] == pytest.approx(b[0][key], abs=1e-6), key
    assert plain[2][0] == cached[2][0] and len(plain[2]) == len(cached[2]) == 7  # header + 6 files
    for row_plain, row_cached in zip(plain[2][1:], cached[2][1:], strict=True):
        assert row_plain[0] == row_cached[0] and row_plain[1] == row_cached[1]  # file and predicted class


def test_a_second_run_reads_the_entries_and_any_change_invalidates_them(
    tree_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tree_factory("data", per_class=6)
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO)
    fit(root, tmp_path, cache, epochs=1)
    first = entries(cache)
    stamps = {p: (p / "features.npy").stat().st_mtime_ns for p in first}
    caplog.clear()
    fit(root, tmp_path, cache, epochs=1)
    assert entries(cache) == first and all((p / "features.npy").stat().st_mtime_ns == t for p, t in stamps.items())
    assert "read from" in caplog.text and "extracting" not in caplog.text

    fit(root, tmp_path, cache, epochs=1, backbone_seed=1)  # other backbone weights
    assert len(entries(cache, "train")) == 2
    fit(root, tmp_path, cache, epochs=1, image_size=40)  # another transform
    assert len(entries(cache, "train")) == 3
    # a file rewritten in place (same name, new pixels): its size or time changes, so the split's entries do
    victim = sorted((root / "red").iterdir())[0]
    Image.new("RGB", (40, 48), (1, 2, 3)).save(victim)
    os.utime(victim, ns=(1, 1))
    fit(root, tmp_path, cache, epochs=1)
    assert len(entries(cache, "train")) + len(entries(cache, "val")) == 3 + 3 + 1  # exactly one split changed


def test_random_augmentation_falls_back_with_one_line_and_still_caches_validation(
    tree_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tree_factory("data", per_class=6)
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO)
    fit(root, tmp_path, cache, epochs=2, augmentation="standard")
    lines = [r.getMessage() for r in caplog.records if "transform is random" in r.getMessage()]
    assert len(lines) == 1 and "train split" in lines[0] and "augmentation: none" in lines[0]
    assert entries(cache, "train") == [] and len(entries(cache, "val")) == 1


@pytest.mark.parametrize(
    ("model_args", "reason"),
    [({"freeze": "none"}, "backbone trains"), ({"unfreeze_at_epoch": 1}, "unfreezes")],
)
def test_a_training_backbone_is_never_cached(model_args: dict, reason: str, tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    cache = tmp_path / "cache"
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn", **{"freeze": "backbone", **model_args})
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[FeatureCache(enabled=True, dir=str(cache))])  # fmt: skip
    with pytest.warns(UserWarning, match=reason):  # enabled: true, so not caching is a warning
        trainer.fit(model, datamodule=data)
    assert entries(cache) == []


def test_unreadable_files_are_left_out_of_the_same_batches(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    broken = root / "green" / "img_003.png"
    broken.write_bytes(broken.read_bytes()[:120])  # the header reads, the pixels do not: found while decoding
    plain, plain_trainer, _ = fit(root, tmp_path, None)
    cached, cached_trainer, data = fit(root, tmp_path, tmp_path / "cache")
    for name, value in plain.head.state_dict().items():
        torch.testing.assert_close(cached.head.state_dict()[name], value, rtol=0, atol=1e-5)
    assert cached_trainer.callback_metrics["val_acc"] == plain_trainer.callback_metrics["val_acc"]
    assert [b.path for b in data.bad_found] == [str(broken)]


def test_interrupted_entries_are_rebuilt_and_rebuild_recomputes(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    cache = tmp_path / "cache"
    fit(root, tmp_path, cache, epochs=1)
    train = entries(cache, "train")[0]
    (train / META_NAME).unlink()  # as if the process died before the entry was complete
    (train / "features.npy").write_bytes(b"garbage")
    fit(root, tmp_path, cache, epochs=1)
    assert json.loads((train / META_NAME).read_text())["complete"] is True
    assert np.load(train / "features.npy").shape[1] == 64
    (train / "features.npy").write_bytes(b"damaged after it was complete")  # metadata intact, data not
    with pytest.warns(UserWarning, match="unreadable"):
        fit(root, tmp_path, cache, epochs=1)
    assert np.load(train / "features.npy").shape[1] == 64
    before = (train / "features.npy").stat().st_mtime_ns
    torch.manual_seed(0)
    again = TransferClassifier(num_classes=3, backbone="smallcnn", freeze="backbone", hidden_dims=[16], dropout=0.3)
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none",
                                 test_fraction=0.2)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[FeatureCache(dir=str(cache), rebuild=True)])  # fmt: skip
    trainer.fit(again, datamodule=data)
    assert (train / "features.npy").stat().st_mtime_ns != before
    assert not [p for p in cache.iterdir() if p.name.startswith(".building")]


def test_cli_caches_into_the_runs_folder_and_clean_cache_deletes_it(
    tree_factory, in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tree_factory("data", per_class=6)
    args = ["fit", "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
            "--data.batch_size", "4", "--data.num_workers", "0", "--data.augmentation", "none",
            "--model", "TransferClassifier", "--model.backbone", "smallcnn", "--model.freeze", "backbone",
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--experiment", "probe"]  # fmt: skip
    main(args)
    cache = in_tmp / "runs" / "feature_cache"
    assert {p.name.split("-")[0] for p in entries(cache)} == {"train", "val"}
    main([*args, "--cache_features.enabled", "false", "--runs_dir", "other"])
    assert not (in_tmp / "other" / "feature_cache").exists()
    main(["clean-cache"])
    assert not cache.exists() and "deleted 2 feature cache entries" in capsys.readouterr().out


def test_transform_determinism_is_judged_by_its_steps() -> None:
    assert is_deterministic(eval_transform(32)) and is_deterministic(train_transform("none", 32))
    assert not is_deterministic(train_transform("standard", 32))
    assert not is_deterministic(train_transform("seed002", 32))
    assert not is_deterministic(lambda image: image)  # unknown callables count as random


def test_fast_dev_run_never_extracts(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    model = TransferClassifier(num_classes=3, backbone="smallcnn", freeze="backbone")
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none")
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=1, callbacks=[FeatureCache(dir=str(tmp_path / "cache"))])
    trainer.fit(model, datamodule=data)
    assert entries(tmp_path / "cache") == []


def test_long_extractions_report_progress(caplog: pytest.LogCaptureFixture) -> None:
    from lit_transfer.callbacks.feature_cache import _Progress

    caplog.set_level(logging.INFO)
    progress = _Progress("train", total=100, world=2, every=0.0)
    progress(25)
    progress(100)  # the end is reported by the "ready" line instead
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("feature cache: train 25% (") and "s left" in lines[0]
