"""Fused steps on cached features: the same optimizer steps, schedules and step count as one batch per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lit_transfer.callbacks import FeatureCache
from lit_transfer.callbacks.reproducibility import EpochSeeder
from lit_transfer.cli import main
from lit_transfer.core.batches import FeatureSteps
from lit_transfer.core.errors import ConfigError
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Record(pl.Callback):
    """Every optimizer step's learning rate, and the batches the model was handed."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.batch_types: set[str] = set()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.batch_types.add(type(batch).__name__)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def fit(root: Path, tmp_path: Path, fused: int, epochs: int = 3, **options: Any) -> tuple[Any, ...]:
    trainer_options = {k: options.pop(k) for k in list(options) if k in ("max_steps", "gradient_clip_val")}
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn", freeze="backbone", hidden_dims=[8], **options)
    # 21 training images in batches of 4: five batches and a last one of a single image, which is left out
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none",
                                 val_fraction=0.1, test_fraction=0.1)  # fmt: skip
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochSeeder(0), FeatureCache(dir=str(tmp_path / "cache"), fused_steps=fused), record],
        default_root_dir=tmp_path,
        **trainer_options,
    )
    trainer.fit(model, datamodule=data)
    return model, trainer, record


@pytest.mark.parametrize(
    "options",
    [
        {"warmup_epochs": 1.0, "cosine": True},  # a step-wise schedule
        {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1}}},
        {"max_steps": 7, "gradient_clip_val": 0.01},  # stops in the middle of a fused batch; clipping acts
    ],
    ids=["warmup-cosine", "epoch-steplr", "max-steps-clip"],
)
def test_fused_steps_train_exactly_as_one_batch_per_step(options: dict, tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    plain, plain_trainer, plain_record = fit(root, tmp_path, 1, **dict(options))
    fused, fused_trainer, fused_record = fit(root, tmp_path, 4, **dict(options))
    assert plain_record.batch_types == {"FeatureBatch"} and fused_record.batch_types == {"FeatureSteps"}
    assert fused_trainer.num_training_batches == 2  # 5 batches of 4 (the single last image left out), 4 per step
    assert fused_trainer.global_step == plain_trainer.global_step == options.get("max_steps", 15)
    assert fused_record.lrs == plain_record.lrs  # the schedule, step by step
    if "lr_scheduler" in options:
        assert plain_record.lrs[0] != plain_record.lrs[-1]  # StepLR did step, once per epoch
    for name, value in plain.head.state_dict().items():
        assert torch.equal(fused.head.state_dict()[name], value), name
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert torch.equal(fused_trainer.callback_metrics[key], plain_trainer.callback_metrics[key]), key
    assert fused.automatic_optimization  # the callback gives the model back as it found it


def test_fused_batches_are_the_unfused_batches(tree_factory, tmp_path: Path) -> None:
    root = tree_factory("data", per_class=10)
    _, trainer, _ = fit(root, tmp_path, 1, epochs=1)
    cache = next(c for c in trainer.callbacks if isinstance(c, FeatureCache))
    data = trainer.datamodule
    data.set_dataset_wrapper(cache.dataset_for)
    plain = list(data.train_dataloader())
    model = trainer.lightning_module
    cache.fused_steps, cache._fused, cache._trainer, cache._model = 4, model, trainer, model
    fused = list(data.train_dataloader())
    assert all(isinstance(b, FeatureSteps) for b in fused) and [b.sizes for b in fused] == [[4, 4, 4, 4], [4]]
    unfused = [one for b in fused for one in b.batches()]
    assert len(unfused) == len(plain) == 5  # the 21st image, a batch of its own, is left out of both
    for a, b in zip(plain, unfused, strict=True):
        assert torch.equal(a.features, b.features) and torch.equal(a.indices, b.indices)
    # a mid-epoch checkpoint after one fused batch resumes at the second (its four batches skipped)
    loader = data.train_dataloader()
    loader.load_state_dict({"epoch": loader.sampler.epoch, "batches": 1})
    assert torch.equal(next(iter(loader)).indices, fused[1].indices)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--trainer.limit_train_batches", "2"], "trainer.limit_train_batches=2"),
        (["--trainer.limit_train_batches", "1"], "trainer.limit_train_batches=1"),  # one batch, not 1.0 of them
        (["--trainer.val_check_interval", "2"], "trainer.val_check_interval=2"),
        (["--trainer.accumulate_grad_batches", "2"], "trainer.accumulate_grad_batches=2"),
        (["--ema.enabled", "true"], "EMA"),
        (["--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val_loss"], "ReduceLROnPlateau"),
    ],
)
def test_configs_that_count_lightning_batches_are_refused_before_training(
    extra: list[str], named: str, image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.test_cli import tiny_args

    args = ["fit", *tiny_args(image_tree), "--model.freeze", "backbone", "--data.augmentation", "none"]
    with pytest.raises((SystemExit, ConfigError)) as raised:
        main([*args, "--cache_features.fused_steps", "4", *extra])
    message = str(raised.value) + capsys.readouterr().err
    assert "cache_features.fused_steps" in message and named in message, message
    assert not list(in_tmp.glob("runs/tiny/*/checkpoints/*.ckpt"))  # refused before any training step


def test_a_fused_run_resumes_unfused_and_back_at_the_same_step(image_tree: Path, in_tmp: Path) -> None:
    from tests.test_cli import run_dir, tiny_args

    probe = ["--model.freeze", "backbone", "--data.augmentation", "none", "--model.warmup_epochs", "1",
             "--model.cosine", "true"]  # fmt: skip
    last = run_dir(in_tmp) / "checkpoints" / "last.ckpt"  # a resumed run continues in its run folder
    steps = []
    for epochs, fused in ((2, "3"), (3, "1"), (4, "3")):
        resume = ["--ckpt_path", str(last)] if steps else []
        main(["fit", *tiny_args(image_tree, *probe, "--cache_features.fused_steps", fused, epochs=epochs), *resume])
        checkpoint = torch.load(last, weights_only=False)
        steps.append(checkpoint["global_step"])
        assert checkpoint["epoch"] == epochs - 1
    assert steps == [2 * 2, 3 * 2, 4 * 2]  # 12 training images in batches of 8: two optimizer steps per epoch
