"""Training batches on the user's path: BatchNorm backbone, loader workers, augmentation on."""

from __future__ import annotations

from pathlib import Path

from userpath import lit, user_args


def test_a_last_training_batch_of_one_image_does_not_crash_batchnorm(tree_factory, tmp_path: Path) -> None:
    """9 training images in batches of 4 leave one image: BatchNorm cannot train on it, so it waits for next epoch."""
    train = tree_factory("train", per_class=3)
    val = tree_factory("val", per_class=1, seed=5)
    args = user_args(train, "--data.val_dir", str(val), epochs=1)  # resnet18: BatchNorm
    args[args.index("--data.root")] = "--data.train_dir"
    result = lit("fit", *args, cwd=tmp_path)
    assert "leaves out its last batch, which would hold a single image (9 images" in result.stderr
