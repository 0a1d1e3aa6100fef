"""GPU benchmark models: ours (``TransferClassifier``), the plain-loop reference, synthetic on-device batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from gpu_common import (
    Setup,
    StepTimer,
    bare_trainer,
    fit_quiet,
    sync,
)
from torch import nn

from lit_transfer.models import TransferClassifier
from lit_transfer.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone

# --- models and synthetic batches ------------------------------------------------------------------------------------


class SyntheticBatches:
    """The same on-device uint8 batch ``length`` times: a train "loader" with no data cost at all."""

    def __init__(self, setup: Setup, length: int, classes: int | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        shape = (setup.batch, 3, setup.size, setup.size)
        self.x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(setup.torch_device)
        self.y = torch.randint(0, classes or setup.classes, (setup.batch,), generator=gen).to(setup.torch_device)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.length):
            yield self.x, self.y


def ours_model(
    setup: Setup, channels_last: bool, compiled: bool, classes: int | None = None, cls: type = TransferClassifier
) -> TransferClassifier:
    """``TransferClassifier`` as the issue runs it (random init); moved to the device by its Trainer."""
    torch.manual_seed(0)
    return cls(
        classes or setup.classes,
        backbone=setup.backbone,
        weights=None,
        optimizer=setup.optimizer_config(),
        channels_last=channels_last,
        # an empty options dict is falsy and would not compile: True means torch.compile's defaults
        compile=(setup.compile_options or True) if compiled else False,
    )


class BookkeepingFreeClassifier(TransferClassifier):
    """Diagnostic: ``TransferClassifier`` whose training step is only forward + cross-entropy.

    It drops what ``_shared_step`` adds per step: the ``torch.isfinite(loss)`` check, the loss ``MeanMetric`` and
    the accuracy/F1/top-5 updates. Each of those waits for the GPU (a Python ``if`` on a device tensor, the
    metrics' NaN check and ``validate_args`` ``torch.unique``), so the CPU cannot queue the next step ahead. Its ratio
    to ``ours (bare Trainer)`` is what that per-step bookkeeping costs on a GPU.
    """

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the batch, nothing else."""
        return F.cross_entropy(self(batch[0]), batch[1], label_smoothing=self.hparams.label_smoothing)


def plain_model(setup: Setup) -> nn.Module:
    """The torchvision model itself (or, for a registered backbone, backbone + linear head), random init."""
    torch.manual_seed(0)
    if setup.backbone in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(setup.backbone, weights=None, num_classes=setup.classes)
    built = build_backbone(setup.backbone, None)
    return nn.Sequential(built.module, nn.Linear(built.feature_dim, setup.classes))


def counted_flops_per_image(setup: Setup) -> float:
    """Forward + backward FLOPs per image counted by ``torch.utils.flop_counter`` on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = plain_model(setup).to("meta")
    x = torch.zeros(2, 3, setup.size, setup.size, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


class PlainLoop:
    """The reference: a hand-written loop with the same normalization, autocast and channels-last as ours.

    The model (compiled with ``model.compile`` when asked) is built once and reused by every call; each call makes
    a fresh optimizer, as each Trainer.fit does for ours.
    """

    def __init__(self, setup: Setup, compiled: bool, channels_last: bool = True, amp: bool = True) -> None:
        self.setup = setup
        device = setup.torch_device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = plain_model(setup).to(device, memory_format=self.memory_format).train()
        if compiled:
            self.model.compile(**setup.compile_options)
        self.amp = amp
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, -1, 1, 1)

    def __call__(self, batches: SyntheticBatches, warmup: int, steps: int) -> float:
        """Train on ``warmup + steps`` batches; return the timed img/s."""
        setup, device = self.setup, self.setup.torch_device
        torch.backends.cudnn.benchmark = True
        opt = setup.make_optimizer(self.model.parameters())
        t0 = 0.0
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                x = ((x.float().div_(255) - self.mean) / self.std).contiguous(memory_format=self.memory_format)
                loss = F.cross_entropy(self.model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i == warmup + steps - 1:
                break
        sync(device)
        return steps * setup.batch / (time.perf_counter() - t0)


def ours_synthetic(
    setup: Setup, model: TransferClassifier, warmup: int, steps: int, precision: str = "bf16-mixed"
) -> Callable[[], float]:
    """A variant: ``model`` trained by a bare Trainer on synthetic on-device batches; returns img/s."""
    batches = SyntheticBatches(setup, warmup + steps, model.hparams.num_classes)

    def run() -> float:
        timer = StepTimer(warmup, steps, setup.torch_device)
        fit_quiet(bare_trainer(setup, warmup + steps, [timer], precision), model, train_dataloaders=batches)
        return timer.rate() * setup.batch

    return run
