"""Every config in configs/ parses and trains one fast_dev_run step on a tiny generated tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_transfer.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert {p.name for p in CONFIGS} >= {
        "quickstart.yaml",
        "resnet34_finetune.yaml",
        "resnet34_feature_extract.yaml",
        "vgg16_frozen.yaml",
        "smallcnn_32px.yaml",
        "shufflenet_v2.yaml",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_one_step(config: Path, tree_factory, in_tmp: Path) -> None:
    spec = yaml.safe_load(config.read_text())
    data_args = spec["data"]["init_args"]
    overrides = ["--data.init_args.image_size", "32", "--data.init_args.num_workers", "0"]
    overrides += ["--data.init_args.batch_size", "4", "--trainer.accelerator", "cpu"]
    for key in ("root", "train_dir", "val_dir", "test_dir"):
        if data_args.get(key):
            overrides += [f"--data.init_args.{key}", str(tree_factory(key, per_class=6))]
    if spec["model"]["init_args"].get("weights"):
        overrides += ["--model.init_args.weights", "null"]  # no downloads in tests
    if spec["model"]["init_args"].get("weights_map"):  # it maps a weights file given on the command line (make demo)
        overrides += ["--model.init_args.weights", "null", "--model.init_args.weights_map", "null"]
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *overrides])
    assert (in_tmp / "split_manifest.csv").exists() is False  # fast_dev_run writes nothing into the working dir
