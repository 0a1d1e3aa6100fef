"""LR schedules sized from the trainer's real optimizer steps, checked step by step through a real Trainer."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_transfer.models import TransferClassifier

HEAD_LR = 0.1
FACTOR = 0.1  # backbone_lr_factor: the backbone group's base lr is 0.01
BASE = {"head": HEAD_LR, "backbone": HEAD_LR * FACTOR}
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": HEAD_LR}}

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


class LrRecorder(pl.Callback):
    """Each group's lr at every batch start and at every optimizer step (with the step's index)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.batches: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    @staticmethod
    def _lrs(trainer: pl.Trainer) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.batches.append(self._lrs(trainer))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.steps.append((trainer.global_step, self._lrs(trainer)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final = self._lrs(trainer)


def fit(batches: int, model: dict[str, Any] | None = None, **trainer: Any) -> LrRecorder:
    """Fit smallcnn (SGD lr 0.1, backbone at 0.1×) on ``batches`` one-image 8 px batches; return the lr record."""
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(batches, 3, 8, 8), torch.arange(batches) % 2)
    classifier = TransferClassifier(
        num_classes=2, backbone="smallcnn", optimizer=SGD, backbone_lr_factor=FACTOR, **(model or {})
    )
    recorder = LrRecorder()
    pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder], num_sanity_val_steps=0, **trainer,
    ).fit(classifier, DataLoader(data, batch_size=1))  # fmt: skip
    return recorder


def expected(step: int, warmup: int, total: int, cosine: bool = True) -> float:
    """The definition: linear warm-up (s+1)/(W+1) for W steps, then cosine from 1 to 0 over the rest."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) if cosine else 1.0


def check_steps(record: LrRecorder, warmup: int, total: int, cosine: bool = True) -> None:
    """Every optimizer step ran at each group's base lr × the definition's factor, and the run took ``total``."""
    assert [s for s, _ in record.steps] == list(range(total))
    for step, lrs in record.steps:
        for group, lr in lrs.items():
            assert lr == pytest.approx(BASE[group] * expected(step, warmup, total, cosine), abs=1e-12), (step, group)


def test_max_epochs_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    record = fit(6, {"warmup_epochs": 1, "cosine": True}, max_epochs=3)
    check_steps(record, warmup=6, total=18)
    assert "6 linear warm-up steps" in caplog.text and "18 optimizer steps in all" in caplog.text


def test_max_steps_only_reaches_cosine() -> None:
    # the reported run: 17 batches, 1 warm-up epoch, max_steps 20 (max_epochs -1); the old code kept lr at 0.1
    record = fit(17, {"warmup_epochs": 1, "cosine": True}, max_epochs=-1, max_steps=20)
    check_steps(record, warmup=17, total=20)
    assert record.final["head"] == pytest.approx(0.0, abs=1e-12) and record.final["backbone"] == pytest.approx(0.0)


def test_max_steps_hit_before_max_epochs() -> None:
    # 10 batches per epoch, max_epochs 10 but max_steps 12: warm-up is 10 steps, not 12 / 10
    record = fit(10, {"warmup_epochs": 1, "cosine": True}, max_epochs=10, max_steps=12)
    check_steps(record, warmup=10, total=12)


def test_limit_train_batches() -> None:
    # 10 batches limited to 4 per epoch; max_steps 10
    record = fit(10, {"warmup_epochs": 1, "cosine": True}, max_epochs=-1, max_steps=10, limit_train_batches=4)
    check_steps(record, warmup=4, total=10)
    assert len(record.batches) == 10


def test_accumulation_with_an_odd_number_of_batches() -> None:
    # 7 batches, accumulate 2: 4 optimizer steps per epoch (the last takes one batch); max_steps 6
    record = fit(7, {"warmup_epochs": 1, "cosine": True}, max_epochs=-1, max_steps=6, accumulate_grad_batches=2)
    check_steps(record, warmup=4, total=6)
    # stepped per optimizer step, not per batch: both batches of an accumulation window see the same lr
    # (epoch 0: batches 0-1, 2-3, 4-5, 6; epoch 1: 7-8, 9-10, then max_steps)
    assert len(record.batches) == 7 + 4
    windows = [record.batches[i : i + 2] for i in (0, 2, 4)] + [record.batches[6:7]]
    windows += [record.batches[i : i + 2] for i in (7, 9)]
    assert [w[0] for w in windows] == [lrs for _, lrs in record.steps]
    assert all(w[0] == w[-1] for w in windows)


def test_fractional_warmup_is_at_least_one_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # 0.04 of a 10-step epoch rounds to 0: one warm-up step, and the log says so
    record = fit(10, {"warmup_epochs": 0.04}, max_epochs=2)
    check_steps(record, warmup=1, total=20, cosine=False)
    assert "1 linear warm-up step (raised to 1)" in caplog.text and "20 optimizer steps in all" in caplog.text


def test_one_cycle_is_stepped_per_step_over_the_run_and_per_group() -> None:
    scheduler = {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.2}}
    record = fit(5, {"lr_scheduler": scheduler}, max_epochs=2)
    # the reference: OneCycleLR over the run's 10 steps with the head's max_lr scaled to each group
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, BASE.values(), strict=True)]
    reference = torch.optim.SGD(groups, lr=HEAD_LR)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=[0.2, 0.2 * FACTOR], total_steps=10)
    want = []
    for _ in range(10):
        want.append(dict(zip(BASE, [g["lr"] for g in reference.param_groups], strict=True)))
        reference.step()
        one_cycle.step()
    assert [s for s, _ in record.steps] == list(range(10))
    for (step, lrs), ref in zip(record.steps, want, strict=True):
        assert lrs == pytest.approx(ref, abs=1e-12), step
    assert len({lrs["head"] for _, lrs in record.steps}) == 10  # a new lr at every step, not every epoch
    assert max(lrs["backbone"] for _, lrs in record.steps) == pytest.approx(0.2 * FACTOR)


def test_cyclic_is_stepped_per_step() -> None:
    scheduler = {
        "class_path": "torch.optim.lr_scheduler.CyclicLR",
        "init_args": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, "cycle_momentum": False},
    }
    record = fit(4, {"lr_scheduler": scheduler}, max_epochs=2)
    # triangular: 0.01, 0.055, 0.1, 0.055, 0.01, … for the head; the backbone's at 0.1×
    head = [0.01, 0.055, 0.1, 0.055, 0.01, 0.055, 0.1, 0.055]
    assert [lrs["head"] for _, lrs in record.steps] == pytest.approx(head)
    assert [lrs["backbone"] for _, lrs in record.steps] == pytest.approx([lr * FACTOR for lr in head])


def test_epoch_wise_schedulers_stay_per_epoch() -> None:
    # a guard, not a fix: StepLR counts epochs
    scheduler = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}
    record = fit(3, {"lr_scheduler": scheduler}, max_epochs=2)
    assert [lrs["head"] for _, lrs in record.steps] == pytest.approx([0.1] * 3 + [0.05] * 3)
    assert [lrs["backbone"] for _, lrs in record.steps] == pytest.approx([0.01] * 3 + [0.005] * 3)


@pytest.mark.parametrize(
    ("model", "trainer", "match"),
    [
        (
            {"warmup_epochs": 1, "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR",
                                                  "init_args": {"step_size": 1}}},
            {"max_epochs": 1},
            r"--lr_scheduler StepLR and model.init_args.warmup_epochs=1 .*not combined",
        ),
        (
            {"cosine": True, "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.ExponentialLR",
                                              "init_args": {"gamma": 0.9}}},
            {"max_epochs": 1},
            r"--lr_scheduler ExponentialLR and model.init_args.cosine=true .*not combined",
        ),
        (
            {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                              "init_args": {"T_max": 2, "eta_min": 0.05}}},
            {"max_epochs": 1},
            r"eta_min=0\.05 is above the backbone group's base lr 0\.01.*eta_min 0\.01 or lower",
        ),
        (
            {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.OneCycleLR",
                              "init_args": {"max_lr": 0.2, "total_steps": 5}}},
            {"max_epochs": 2},
            r"OneCycleLR spans 5 steps .* the run takes 6 optimizer steps",
        ),
        ({"cosine": True}, {"max_epochs": -1, "max_steps": -1}, r"cosine: true needs a bounded run"),
    ],
)  # fmt: skip
def test_configuration_errors(model: dict[str, Any], trainer: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit(3, model, **trainer)
