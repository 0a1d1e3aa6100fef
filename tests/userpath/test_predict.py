"""``predict`` as the README shows it: only the checkpoint and the images are needed, and never random weights."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from userpath import lit, user_args

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/rotnet"))
from rotnet_images import asymmetric_image  # noqa: E402


def test_predict_needs_a_checkpoint_but_not_the_training_folder(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=6)
    photos = tmp_path / "photos"
    shutil.copytree(root / "red", photos)
    refused = lit("predict", *user_args(root, backbone="smallcnn"), "--data.predict_dir", str(photos), cwd=tmp_path,
                  check=False)  # fmt: skip
    assert refused.returncode == 2 and "--ckpt_path" in refused.stderr and "random" in refused.stderr
    lit("fit", *user_args(root, backbone="smallcnn", epochs=1), cwd=tmp_path)
    shutil.rmtree(root)  # the training folder is gone: the checkpoint knows the classes
    lit("predict", *user_args(root, backbone="smallcnn"), "--data.predict_dir", str(photos), "--ckpt_path", "last",
        cwd=tmp_path)  # fmt: skip
    assert not (tmp_path / "runs/user/version_1").exists()  # an evaluation is not a training run
    with open(tmp_path / "runs/user/version_0/predict_0/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in photos.iterdir())
    assert {r["top1"] for r in rows} <= {"red", "green", "blue"}


def test_readme_upright_command_without_the_training_folder(tmp_path: Path) -> None:
    """The README's orientation fixer: ``predict --config configs/rotnet_resnet50.yaml ... --write_upright``."""
    train = tmp_path / "data/streetview"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(np.roll(asymmetric_image(48, 48), int(rng.integers(0, 20)), axis=1)).save(train / f"{i}.png")
    config = ("--config", str(REPO / "configs/rotnet_resnet50.yaml"))
    # trained small and briefly (and without ImageNet weights, which cannot be downloaded here)
    lit("fit", *config, "--model.init_args.weights", "null", "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1", cwd=tmp_path)  # fmt: skip
    shutil.rmtree(tmp_path / "data")
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(asymmetric_image(48, 64)).rotate(90, expand=True).save(scans / "turned.png")
    ckpt = tmp_path / "runs/rotnet_resnet50/version_0/checkpoints/last.ckpt"
    result = lit("predict", *config, "--ckpt_path", str(ckpt), "--data.init_args.predict_dir", "scans/",
        "--data.init_args.write_upright", "scans_upright/", cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "scans_upright/turned.png").is_file()
    assert "trained on 32 px images" in result.stderr  # the config says 224
