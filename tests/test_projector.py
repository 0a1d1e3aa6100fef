"""The embedding projector: validation features, labels, predictions and thumbnails for TensorBoard's PROJECTOR tab."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from google.protobuf import text_format
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from test_cli import run_dir, tiny_args

from lit_transfer.callbacks import EmbeddingProjector
from lit_transfer.callbacks.projector import stratified_subset
from lit_transfer.cli import main
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.features import FEATURES_NAME
from lit_transfer.models import TransferClassifier


def projector(run: Path) -> list[dict[str, Any]]:
    """Every embedding of ``run``'s projector config, read as TensorBoard reads it, with its files loaded."""
    config = text_format.Parse((run / "projector_config.pbtxt").read_text(), ProjectorConfig())
    found = []
    for e in config.embeddings:
        files = {"tensors": run / e.tensor_path, "metadata": run / e.metadata_path, "sprite": run / e.sprite.image_path}
        assert all(p.is_file() for p in files.values()), files
        features = np.loadtxt(files["tensors"], delimiter="\t", dtype=np.float32, ndmin=2)
        with open(files["metadata"], newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        found.append(
            {
                "name": e.tensor_name,
                "shape": list(e.tensor_shape),
                "features": features,
                "rows": rows,
                "sprite": Image.open(files["sprite"]).size,
                "tile": list(e.sprite.single_image_dim),
            }
        )
    return found


def val_classes(run: Path, root: Path) -> dict[str, str]:
    """Absolute path → class of every validation file, from the run's split manifest."""
    with open(run / "split_manifest.csv") as f:
        return {str(root / r["path"]): r["class"] for r in csv.DictReader(f) if r["split"] == "val"}


def trained(run: Path) -> tuple[TransferClassifier, ImageFolderDataModule]:
    """The model of ``last.ckpt`` and the run's data module (from its config.yaml), set up for fit."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    model = TransferClassifier(num_classes=hparams["num_classes"], backbone=hparams["backbone"])
    model.load_state_dict(ckpt["state_dict"])
    model.class_names = hparams["class_names"]
    init = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    data = ImageFolderDataModule(**init)
    data.setup("fit")
    return model.eval(), data


def test_fit_writes_the_val_features_labels_predictions_and_sprite(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=2)])
    run = run_dir(in_tmp)
    (embedding,) = projector(run)  # at the end of fit only
    truth = val_classes(run, image_tree)
    n = len(truth)
    model, data = trained(run)
    with torch.no_grad():
        width = model.forward_features(data.image_of("val", 0)[None]).shape[1]
    assert embedding["features"].shape == (n, width) and embedding["shape"] == [n, width]
    rows = embedding["rows"]
    assert sorted(r["path"] for r in rows) == sorted(truth)
    assert all(r["label"] == truth[r["path"]] for r in rows)
    assert all(r["correct"] == str(r["label"] == r["prediction"]).lower() for r in rows)
    # the features and predictions are the trained model's, for the evaluation view of each file
    paths = data.paths_of("val", range(n))
    images = torch.stack([data.image_of("val", i) for i in range(n)])
    with torch.no_grad():
        features = model.forward_features(images)
        predicted = model(images).argmax(dim=1)
    by_path = {r["path"]: k for k, r in enumerate(rows)}
    order = [by_path[p] for p in paths]
    np.testing.assert_allclose(embedding["features"][order], features.numpy(), rtol=1e-4, atol=1e-5)
    assert [rows[k]["prediction"] for k in order] == [model.class_names[c] for c in predicted.tolist()]
    # the sprite: ceil(sqrt(N)) tiles of the thumbnail size a side
    side = math.ceil(math.sqrt(n)) * 32
    assert embedding["sprite"] == (side, side) and embedding["tile"] == [32, 32]


def test_max_points_every_n_epochs_and_thumbnail_size(tree_factory, in_tmp: Path) -> None:
    root = tree_factory("data", per_class=16)
    extra = ("--projector.max_points", "5", "--projector.every_n_epochs", "1", "--projector.thumbnail_size", "16")
    main(["fit", *tiny_args(root, *extra, epochs=2)])
    run = run_dir(in_tmp)
    embeddings = projector(run)
    assert len(embeddings) == 2  # after epochs 1 and 2; the end of fit does not write epoch 2's again
    truth = val_classes(run, root)
    assert len(truth) > 5
    for embedding in embeddings:
        rows = embedding["rows"]
        assert embedding["features"].shape[0] == len(rows) == 5
        assert {r["path"] for r in rows} <= set(truth) and len({r["path"] for r in rows}) == 5
        assert {r["label"] for r in rows} == set(truth.values())  # stratified: every class is shown
        assert embedding["sprite"] == (3 * 16, 3 * 16) and embedding["tile"] == [16, 16]
    assert [r["path"] for r in embeddings[0]["rows"]] == [r["path"] for r in embeddings[1]["rows"]]  # the same subset


def test_projector_off(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, "--projector.enabled", "false")])
    assert (run_dir(in_tmp) / "config.yaml").is_file()
    assert not (run_dir(in_tmp) / "projector_config.pbtxt").exists()
    assert not (run_dir(in_tmp) / "projector").exists()


def test_nothing_without_a_tensorboard_logger_or_under_fast_dev_run(tmp_path: Path) -> None:
    callback, model = EmbeddingProjector(), SimpleNamespace(forward_features=None, head=None)
    logger = TensorBoardLogger(str(tmp_path))
    assert callback._active(SimpleNamespace(fast_dev_run=0, loggers=[logger]), model)  # type: ignore[arg-type]
    assert not callback._active(SimpleNamespace(fast_dev_run=1, loggers=[logger]), model)  # type: ignore[arg-type]
    assert not callback._active(SimpleNamespace(fast_dev_run=0, loggers=[]), model)  # type: ignore[arg-type]
    assert not EmbeddingProjector(enabled=False)._active(SimpleNamespace(fast_dev_run=0, loggers=[logger]), model)  # type: ignore[arg-type]
    assert not callback._active(SimpleNamespace(fast_dev_run=0, loggers=[logger]), SimpleNamespace())  # type: ignore[arg-type]


def test_stratified_subset_and_bounds() -> None:
    targets = [0] * 60 + [1] * 30 + [2] * 10
    chosen = stratified_subset(targets, 10)
    assert chosen == sorted(set(chosen)) and len(chosen) == 10
    assert [sum(targets[i] == c for i in chosen) for c in range(3)] == [6, 3, 1]
    assert stratified_subset(targets, 10) == chosen  # deterministic
    assert stratified_subset(targets, 7) != stratified_subset(targets, 7, seed=1)
    assert stratified_subset(targets, 100) == list(range(100))
    with pytest.raises(ValueError, match="sprite"):
        EmbeddingProjector(max_points=100_000, thumbnail_size=48)
    with pytest.raises(ValueError):
        EmbeddingProjector(max_points=0)


def test_cached_features_are_projected_without_running_the_backbone(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"during": 0, "now": 0, "projecting": False}
    forward_features, project = TransferClassifier.forward_features, EmbeddingProjector.project

    def counting_forward_features(self: TransferClassifier, x: torch.Tensor) -> torch.Tensor:
        calls["during"] += bool(calls["projecting"])
        return forward_features(self, x)

    def tracked_project(self: EmbeddingProjector, *args: Any, **kwargs: Any) -> None:
        calls["projecting"] = True
        try:
            project(self, *args, **kwargs)
        finally:
            calls["projecting"] = False

    monkeypatch.setattr(TransferClassifier, "forward_features", counting_forward_features)
    monkeypatch.setattr(EmbeddingProjector, "project", tracked_project)
    frozen = ("--model.freeze", "backbone", "--data.augmentation", "none")
    main(["fit", *tiny_args(image_tree, *frozen, "--cache_features.enabled", "false")])
    assert calls["during"] > 0  # without the cache the backbone runs for the projector
    calls["during"] = 0
    main(["fit", *tiny_args(image_tree, *frozen, "--cache_features.enabled", "true")])
    assert calls["during"] == 0
    (entry,) = (in_tmp / "runs" / "feature_cache").glob("val-*")
    cached = np.load(entry / FEATURES_NAME)
    (embedding,) = projector(run_dir(in_tmp, 1))
    (uncached,) = projector(run_dir(in_tmp, 0))
    assert embedding["features"].shape == cached.shape
    rows = sorted(map(tuple, embedding["features"].tolist()))
    assert rows == sorted(map(tuple, cached.tolist()))  # exactly the stored arrays
    np.testing.assert_allclose(embedding["features"], uncached["features"], rtol=1e-4, atol=1e-5)


def test_readme_documents_the_projector_options() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--projector.*` |"))
    for name in inspect.signature(EmbeddingProjector.__init__).parameters:
        if name != "self":
            assert f"`{name}: " in row, f"README's --projector.* row lacks {name!r}"
    assert "`projector_config.pbtxt`" in readme
