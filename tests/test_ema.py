"""WeightEMA (``--ema.*``): the update rule, validation and checkpoints on the EMA, exact resume, off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from test_cli import run_dir, tiny_args

from lit_transfer.callbacks import WeightEMA
from lit_transfer.callbacks.ema import ema_multi_avg_fn
from lit_transfer.cli import ConfigError, main
from lit_transfer.core.lightning_private import signal_connector
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier
from lit_transfer.trainer_defaults import build_trainer

State = dict[str, torch.Tensor]
DECAY = 0.8  # low, so a few steps move the average well away from the first weights


class LiveRecorder(Callback):
    """Placed after WeightEMA: the live weights after every optimizer step, and each epoch's logged ``val_loss``."""

    def __init__(self) -> None:
        self.live: list[State] = []
        self.val_loss: dict[int, float] = {}  # global step → val_loss logged by the validation there

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.live.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_loss[trainer.global_step] = float(trainer.callback_metrics["val_loss"])


class SigtermAt(Callback):
    """Flag a SIGTERM (as lit_transfer's handler does) after training batch ``batch`` or validation batch 0."""

    def __init__(self, epoch: int, batch: int | None = None) -> None:
        self.epoch, self.batch = epoch, batch
        self.model: pl.LightningModule | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            signal_connector(trainer).received_sigterm = True

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.model = pl_module
        if self.batch is None and not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            signal_connector(trainer).received_sigterm = True  # mid-validation: the EMA is in the model


def fit(
    root: Path,
    runs: Path,
    name: str,
    epochs: int,
    ema: bool | dict[str, Any] = {"decay": DECAY},  # noqa: B006  # never mutated
    ckpt_path: str | None = None,
    callbacks_after: tuple[Callback, ...] = (),
    **model_kwargs: Any,
) -> tuple[pl.Trainer, TransferClassifier, ImageFolderDataModule]:
    pl.seed_everything(42, verbose=False)
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, val_fraction=0.25)
    model = TransferClassifier(num_classes=3, class_names=dm.class_names, **{"backbone": "smallcnn", **model_kwargs})
    trainer = build_trainer(
        runs, name, ema=ema, reports=False, projector=False, checkpoint={"save_top_k": -1},
        callbacks_after=callbacks_after, max_epochs=epochs, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, dm


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def epoch_checkpoints(runs: Path, name: str) -> dict[int, dict[str, Any]]:
    return {ck["epoch"]: ck for ck in map(load, (runs / name).glob("version_*/checkpoints/epoch*.ckpt"))}


def reference_ema(live: list[State], decay: float, every: int = 1, warmup: bool = False) -> dict[str, torch.Tensor]:
    """The EMA of the recorded live states, in float64: the first update copies, then ``d * ema + (1 - d) * live``."""
    updates = [state for step, state in enumerate(live, 1) if step % every == 0]
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in updates[0].items()}
    for n, state in enumerate(updates[1:], 1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for k, v in state.items():
            ema[k] = d * ema[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    return ema


def assert_same(a: State, b: State) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_ema_of(state: State, live: list[State], **rule: Any) -> None:
    expected = reference_ema(live, **rule)
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert value.dtype == live[-1][key].dtype, key
        assert torch.allclose(value.double(), expected[key].double(), rtol=1e-5, atol=1e-6), key


def moved(ema: State, live: State) -> set[str]:
    return {k for k in ema if not torch.equal(ema[k], live[k])}


@pytest.fixture(scope="module")
def straight(
    tmp_path_factory: pytest.TempPathFactory, tree_maker: Any
) -> tuple[Path, Path, LiveRecorder, TransferClassifier]:
    """Two epochs with the EMA (decay 0.8), every epoch's checkpoint kept, the live weights of every step recorded."""
    base = tmp_path_factory.mktemp("ema")
    root = tree_maker(base / "data", per_class=6)
    recorder = LiveRecorder()
    _, model, _ = fit(root, base / "runs", "straight", epochs=2, callbacks_after=(recorder,))
    return root, base / "runs", recorder, model


def test_update_rule_is_a_lerp_that_keeps_equal_and_integer_tensors_exact() -> None:
    update = ema_multi_avg_fn(0.9, warmup=True)
    ema, live = (
        [torch.tensor([1.0, 0.1234567]), torch.tensor([3.0])],
        [torch.tensor([2.0, 0.1234567]), torch.tensor([3.0])],
    )
    update(ema, live, torch.tensor(1))  # warm-up after one update: min(0.9, 2 / 11)
    assert torch.allclose(ema[0][0], torch.tensor(2 / 11 * 1.0 + 9 / 11 * 2.0))
    assert ema[0][1] == live[0][1] and ema[1] == live[1]  # an unchanged value stays bitwise the same
    counts = [torch.tensor(5)]
    update(counts, [torch.tensor(9)], torch.tensor(3))
    assert counts[0].item() == 9  # counts are copied
    with pytest.raises(ValueError, match=r"ema\.decay"):
        WeightEMA(enabled=True, decay=1.0)
    with pytest.raises(ValueError, match=r"ema\.update_every_n_steps"):
        WeightEMA(enabled=True, update_every_n_steps=0)


def test_checkpoints_hold_the_ema_of_the_live_weights_and_validation_uses_it(straight, tmp_path: Path) -> None:
    root, runs, recorder, model = straight
    checkpoints = epoch_checkpoints(runs, "straight")
    last = load(next((runs / "straight").glob("version_*/checkpoints/last.ckpt")))
    assert sorted(checkpoints) == [0, 1] and last["global_step"] == len(recorder.live)
    for ck in [*checkpoints.values(), last]:
        step = ck["global_step"]
        assert_ema_of(ck["state_dict"], recorder.live[:step], decay=DECAY)
        assert_same(ck["current_model_state"], recorder.live[step - 1])
        assert int(ck["averaging_state"]["n_averaged"]) == step
        changed = moved(ck["state_dict"], ck["current_model_state"])
        assert "head.0.weight" in changed and not changed & {"mean", "std", "class_weight"}
    assert_same(model.state_dict(), last["state_dict"])  # fit ends with the EMA in the model

    # the logged val_loss is the EMA's: validate --ckpt_path gets it again with no option; the live weights do not
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, val_fraction=0.25)
    evaluator = build_trainer(tmp_path, "eval", ema=True, logger=False, accelerator="cpu", enable_progress_bar=False)
    final = str(next((runs / "straight").glob("version_*/checkpoints/epoch001-*.ckpt")))
    validated = evaluator.validate(model, datamodule=dm, ckpt_path=final)[0]["val_loss"]
    assert validated == pytest.approx(recorder.val_loss[last["global_step"]], rel=1e-5)
    model.load_state_dict(last["current_model_state"])
    live_loss = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(model, datamodule=dm)
    assert abs(live_loss[0]["val_loss"] - validated) > 1e-4


class TinyBNNet(torch.nn.Sequential):
    """A backbone with BatchNorm: (conv, BatchNorm, ReLU) twice, pooled to ``(B, 8)``."""

    def __init__(self) -> None:
        nn = torch.nn
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip


def test_buffers_frozen_and_thawing_parameters_with_update_interval_and_warmup(tmp_path: Path, tree_maker: Any) -> None:
    # stages 0 (conv) and 1 (BatchNorm) are frozen in epoch 0 and thaw at epoch 1: frozen tensors stay the live ones
    # exactly; BatchNorm statistics that change are averaged, their counts copied
    root = tree_maker(tmp_path / "data", per_class=6)
    recorder = LiveRecorder()
    rule = {"decay": 0.95, "update_every_n_steps": 2, "warmup": True}
    backbone = {"class_path": f"{__name__}.TinyBNNet", "input_size": 32}
    fit(root, tmp_path / "runs", "bn", 2, rule, None, (recorder,), backbone=backbone, freeze=2, unfreeze_milestones=[1])
    checkpoints = epoch_checkpoints(tmp_path / "runs", "bn")
    for ck in checkpoints.values():
        assert_ema_of(ck["state_dict"], recorder.live[: ck["global_step"]], decay=0.95, every=2, warmup=True)
        assert int(ck["averaging_state"]["n_averaged"]) == ck["global_step"] // 2
    frozen = ("backbone.0.", "backbone.1.")
    assert not {
        k for k in moved(checkpoints[0]["state_dict"], checkpoints[0]["current_model_state"]) if k.startswith(frozen)
    }
    changed = moved(checkpoints[1]["state_dict"], checkpoints[1]["current_model_state"])
    assert {"backbone.0.weight", "backbone.1.running_mean", "backbone.3.weight", "backbone.4.running_var"} <= changed
    assert not {k for k in changed if "num_batches" in k}


def test_resume_from_an_interrupted_checkpoint_is_bitwise_exact(straight, tmp_path: Path) -> None:
    root, runs, _, _ = straight
    with pytest.raises(SIGTERMException):
        fit(root, tmp_path, "stopped", epochs=2, callbacks_after=(SigtermAt(epoch=1, batch=1),))
    interrupted = next(tmp_path.glob("stopped/version_*/checkpoints/interrupted.ckpt"))
    fit(root, tmp_path, "resumed", epochs=2, ckpt_path=str(interrupted))
    resumed = load(next(tmp_path.glob("resumed/version_*/checkpoints/last.ckpt")))
    expected = load(next((runs / "straight").glob("version_*/checkpoints/last.ckpt")))
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert_same(resumed[key], expected[key])


def test_a_sigterm_inside_validation_saves_the_live_and_the_averaged_weights(straight, tmp_path: Path) -> None:
    root, runs, _, _ = straight
    stop = SigtermAt(epoch=0)
    with pytest.raises(SIGTERMException):
        fit(root, tmp_path, "stopped", epochs=2, callbacks_after=(stop,))
    interrupted = load(next(tmp_path.glob("stopped/version_*/checkpoints/interrupted.ckpt")))
    epoch0 = epoch_checkpoints(runs, "straight")[0]  # the same weights, saved after that validation
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert_same(interrupted[key], epoch0[key])
    assert stop.model is not None
    assert_same(stop.model.state_dict(), epoch0["current_model_state"])  # the live weights are back in the model


def test_cli_resume_is_bitwise_exact_and_off_by_default_changes_nothing(image_tree: Path, in_tmp: Path) -> None:
    ema = ("--ema.enabled", "true", "--ema.decay", "0.9")
    main(["fit", *tiny_args(image_tree, *ema, "--experiment", "straight", epochs=2)])
    main(["fit", *tiny_args(image_tree, *ema, epochs=1)])
    main(["fit", *tiny_args(image_tree, *ema, epochs=2), "--ckpt_path", "last"])
    straight = load(in_tmp / "runs/straight/version_0/checkpoints/last.ckpt")
    resumed = load(run_dir(in_tmp) / "checkpoints/last.ckpt")
    assert resumed["epoch"] == 1 and moved(straight["state_dict"], straight["current_model_state"])
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert_same(resumed[key], straight[key])
    # the default: no EMA anywhere in the checkpoint, and the live weights the EMA run trained, bit for bit
    main(["fit", *tiny_args(image_tree, "--experiment", "plain", epochs=2)])
    plain = load(in_tmp / "runs/plain/version_0/checkpoints/last.ckpt")
    assert not {"current_model_state", "averaging_state"} & plain.keys() and "WeightEMA" not in plain["callbacks"]
    assert_same(plain["state_dict"], straight["current_model_state"])


def test_head_training_on_cached_features_averages_only_the_head(image_tree: Path, in_tmp: Path) -> None:
    cached = ("--model.freeze", "backbone", "--data.augmentation", "none", "--cache_features.enabled", "true")
    main(["fit", *tiny_args(image_tree, *cached, "--ema.enabled", "true", "--ema.decay", "0.5", epochs=2)])
    assert list((in_tmp / "runs/feature_cache").iterdir())
    ck = load(run_dir(in_tmp) / "checkpoints/last.ckpt")
    assert moved(ck["state_dict"], ck["current_model_state"]) == {"head.0.weight", "head.0.bias"}


def test_weights_only_checkpoints_are_refused(image_tree: Path, tmp_path: Path) -> None:
    pl.seed_everything(42, verbose=False)
    dm = ImageFolderDataModule(root=str(image_tree), image_size=32, batch_size=4, num_workers=0)
    model = TransferClassifier(num_classes=3, class_names=dm.class_names, backbone="smallcnn")
    trainer = build_trainer(tmp_path, "w", ema=True, checkpoint={"save_weights_only": True}, accelerator="cpu")
    with pytest.raises(ConfigError, match="save_weights_only"):
        trainer.fit(model, datamodule=dm)
