"""lit_transfer GPU benchmarks: ResNet50 img/s against a plain PyTorch loop, MFU, and the data-stall ratio.

Run from the repository root on a machine with one CUDA GPU (bf16 needs Ampere or newer)::

    python benchmarks/gpu.py --quick                      # every section, fewer steps and rounds
    python benchmarks/gpu.py                              # every section, the figures to report
    python benchmarks/gpu.py --only parity compile        # sections: parity compile precision stall
    python benchmarks/gpu.py --peak-tflops 989             # when the GPU is not in PEAK_BF16_TFLOPS (or is a MIG slice)
    python benchmarks/gpu.py --smoke                      # every code path on the CPU in seconds, to check the script

Like ``benchmarks/run.py``, every figure is a ratio of variants measured in the same run: variants are interleaved
A/B/A/B per round (order reversed every other round), round 0 is a discarded warm-up, and each ratio is the median of
the per-round ratios. Within a variant the first ``--warmup`` steps (cuDNN autotuning, ``torch.compile``) are not
timed; the clock runs from the start of the first timed step to the end of the last one, with a
``torch.cuda.synchronize()`` at both ends. Models are built once per variant and reused across rounds, so a compiled
model compiles once, in round 0. Writes ``benchmarks/results_gpu.json`` (``--smoke``: ``results_gpu_smoke.json`` in
the temp folder) and prints a table plus a markdown snippet for ``benchmarks/RESULTS.md``. Never run by the tests.

Sections:

* ``parity``: ResNet50 (``weights=None``, 1000 classes) bf16-mixed + channels-last on synthetic uint8 batches already
  on the GPU: lit_transfer (``TransferClassifier`` + Trainer, bare and with lit_transfer's default callbacks/logger)
  ÷ a plain loop (torchvision resnet50, same normalization, ``torch.autocast``). Goal ≥ 0.98. A diagnostic variant
  whose training step is only forward + loss shows what the per-step metrics and NaN check cost.
* ``compile``: the same pair with ``torch.compile`` on both sides (and ours compiled ÷ ours eager).
* ``precision``: ours bf16-mixed (+ channels-last) ÷ ours fp32.
* ``stall``: the data-stall ratio: ours fed by ``ImageFolderDataModule`` over generated photo-like JPEGs (PIL decode
  in ``num_workers`` = available cores) ÷ ours fed synthetic on-GPU batches (goal ≥ 0.9); and the same with GPU
  JPEG decoding (workers read bytes, the main process decodes with ``torchvision.io.decode_jpeg(device="cuda")``
  and crops/resizes on the GPU).

Every throughput also gets its model FLOP utilisation: img/s x 24.5 GFLOP (ResNet50 forward + backward per 224 px
image, the issue's definition) ÷ the GPU's peak dense bf16 FLOP/s, and its share of MLPerf's ≈ 7,150 img/s per H100.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torchvision  # noqa: E402
from lightning.pytorch.callbacks import Callback, LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from PIL import Image  # noqa: E402
from run import interleaved, temp_dir  # noqa: E402  (benchmarks/run.py: the same A/B/A/B protocol)
from torchvision.transforms import RandomResizedCrop  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from lit_transfer.callbacks import PredictionWriter, RunCheckpoint, TensorBoardReports  # noqa: E402
from lit_transfer.callbacks.checkpoint import AsyncAtomicCheckpointIO  # noqa: E402
from lit_transfer.callbacks.progress import ThrottledProgressBar  # noqa: E402
from lit_transfer.callbacks.reproducibility import EpochSeeder  # noqa: E402
from lit_transfer.callbacks.signals import SigtermHandler  # noqa: E402
from lit_transfer.data import ImageFolderDataModule  # noqa: E402
from lit_transfer.data.base import EpochSampler, default_num_workers  # noqa: E402
from lit_transfer.models import TransferClassifier  # noqa: E402
from lit_transfer.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone  # noqa: E402

warnings.filterwarnings("ignore")  # Lightning tips, torchvision's decode_jpeg/read_file deprecation notices
for _name in ("lightning.pytorch", "lightning.fabric", "lit_transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # parameter tables, "GPU available", tips

RESULTS = Path(__file__).resolve().parent / "results_gpu.json"

# --- reference figures (from the performance issue) ------------------------------------------------------------------

# ResNet50 forward + backward FLOPs per 224 px image: 3 x ~8.2 GFLOP forward (4.1 GMAC). torch's FlopCounterMode
# counts 24.3 GFLOP (the first convolution computes no input gradient); the script records that count beside it.
RESNET50_GFLOP_PER_IMAGE = 24.5
MLPERF_H100_IMG_S = 7150.0  # MLPerf Training ResNet-50, per H100: the practical ceiling
TUNED_A100_IMG_S = 2470.0  # tuned PyTorch ResNet-50 training, per A100
PUBLISHED_MFU = (0.17, 0.27)  # MFU of published ResNet-50 training runs
GOAL_PARITY = 0.98
GOAL_STALL = 0.90
LOADER_TIMEOUT_S = 600.0  # a stuck loader worker fails the section instead of hanging the run

# Peak dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s, matched in order against torch.cuda.get_device_name().
# NVIDIA datasheets print the sparse figure (marked *); dense is half of it. Boost-clock figures: a power- or
# clock-capped GPU peaks lower, and a MIG slice has a fraction of the SMs: pass --peak-tflops then.
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    (r"H100.*PCIe", 756.0, "H100 PCIe datasheet: 1,513 TFLOPS bf16 with sparsity"),
    (r"H100.*NVL", 835.0, "H100 NVL datasheet: 1,671 TFLOPS bf16 with sparsity, per GPU"),
    (r"H200.*NVL", 835.0, "H200 NVL datasheet: 1,671 TFLOPS bf16 with sparsity"),
    (r"H100|GH200", 989.4, "H100 SXM5 datasheet: 1,979 TFLOPS bf16 with sparsity (GH200: the same H100 die)"),
    (r"H200", 989.4, "H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity (same compute as H100 SXM)"),
    (r"A100", 312.0, "A100 datasheet (SXM4 and PCIe, 40/80 GB): 624 TFLOPS bf16 with sparsity"),
    (r"A10G", 70.0, "AWS A10G (g5): ~70 TFLOPS bf16 tensor, below the A10 (vendor comparisons; no datasheet)"),
    (r"\bA10\b", 125.0, "A10 datasheet: 250 TFLOPS bf16 with sparsity"),
    (r"L40S", 362.05, "L40S datasheet: 733 TFLOPS bf16 with sparsity"),
    (r"\bL4\b", 121.0, "L4 datasheet: 242 TFLOPS bf16 with sparsity"),
]


def peak_bf16_tflops(device_name: str) -> tuple[float | None, str]:
    """Peak dense bf16 TFLOP/s of a GPU from its name, and where the figure comes from (``None`` if unknown)."""
    for pattern, tflops, source in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops, source
    return None, f"unknown GPU {device_name!r}: pass --peak-tflops"


# --- settings --------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything a section needs to know; one object per run, recorded in the JSON."""

    device: str
    smoke: bool
    quick: bool
    backbone: str
    batch: int
    size: int
    classes: int
    warmup: int
    steps: int
    rounds: int
    optimizer: str
    lr: float
    compile_options: dict[str, Any]
    workers: int
    jpeg_sizes: list[tuple[int, int]]
    gpu_decode: bool
    unique_images: int
    data_dir: str | None
    command: str = ""
    peak_tflops: float | None = None
    flops_per_image: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def torch_device(self) -> torch.device:
        """The device every variant trains on."""
        return torch.device(self.device)

    @property
    def accelerator(self) -> str:
        """The Lightning accelerator of that device."""
        return "gpu" if self.torch_device.type == "cuda" else "cpu"

    def optimizer_config(self) -> dict[str, Any]:
        """The optimizer as ``TransferClassifier(optimizer=...)`` takes it; the plain loop builds the same one."""
        if self.optimizer == "sgd":
            return {
                "class_path": "torch.optim.SGD",
                "init_args": {"lr": self.lr, "momentum": 0.9, "weight_decay": 5e-5},
            }
        return {"class_path": "torch.optim.AdamW", "init_args": {"lr": self.lr, "weight_decay": 0.01}}

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The plain loop's optimizer: the class and arguments of :meth:`optimizer_config`."""
        config = self.optimizer_config()
        cls = torch.optim.SGD if config["class_path"].endswith("SGD") else torch.optim.AdamW
        return cls(params, **config["init_args"])


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- measurement helpers: temp_dir and interleaved come from benchmarks/run.py ----------------------------------------


def ratio_rows(
    section: str, rates: dict[str, list[float]], base: str, command: str, goal: float | None = None
) -> list[dict[str, Any]]:
    """Per-round ratios of every variant to ``base``; the median ratio is the reported figure."""
    rows = []
    for name, values in rates.items():
        if name == base:
            continue
        ratios = [v / b for v, b in zip(values, rates[base], strict=True)]
        ratio = statistics.median(ratios)
        rows.append(
            {
                "section": section,
                "kind": "ratio",
                "row": f"{name} / {base}",
                "ratio": ratio,
                "ratios": [round(x, 4) for x in ratios],
                "rate": statistics.median(values),
                "base_rate": statistics.median(rates[base]),
                "rates": [round(x, 2) for x in values],
                "base_rates": [round(x, 2) for x in rates[base]],
                "goal": goal,
                "meets_goal": None if goal is None else ratio >= goal,
                "command": command,
            }
        )
    return rows


def rate_rows(section: str, rates: dict[str, list[float]], setup: Setup, command: str) -> list[dict[str, Any]]:
    """img/s of every variant with its MFU (img/s x FLOP per image ÷ peak) and its share of the published rates."""
    rows = []
    for name, values in rates.items():
        img_s = statistics.median(values)
        mfu = None if setup.peak_tflops is None else img_s * setup.flops_per_image / (setup.peak_tflops * 1e12)
        rows.append(
            {
                "section": section,
                "kind": "rate",
                "row": name,
                "img_s": img_s,
                "img_s_rounds": [round(x, 2) for x in values],
                "mfu": mfu,
                "mfu_rounds": None
                if setup.peak_tflops is None
                else [round(v * setup.flops_per_image / (setup.peak_tflops * 1e12), 4) for v in values],
                "vs_mlperf_h100": img_s / MLPERF_H100_IMG_S,
                "vs_tuned_a100": img_s / TUNED_A100_IMG_S,
                "command": command,
            }
        )
    return rows


class StepTimer(Callback):
    """Wall time from the start of training batch ``warmup`` to the end of the last batch, device-synchronized."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.t1 = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock at the first timed batch, once the warm-up steps have finished on the device."""
        if idx == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop the clock once the last batch has finished on the device."""
        if idx == self.warmup + self.steps - 1:
            sync(self.device)
            self.t1 = time.perf_counter()

    def rate(self) -> float:
        """Timed steps per second."""
        if self.t0 is None or self.t1 is None:
            raise RuntimeError(f"the run ended before step {self.warmup + self.steps} (too few batches?)")
        return self.steps / (self.t1 - self.t0)


def fit_quiet(trainer: pl.Trainer, model: pl.LightningModule, **fit_kwargs: Any) -> None:
    """``trainer.fit`` with its output swallowed; on an error the captured output goes to stderr."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            trainer.fit(model, **fit_kwargs)
    except BaseException:
        sys.stderr.write(captured.getvalue()[-4000:])
        raise


def bare_trainer(setup: Setup, steps: int, callbacks: list[Callback], precision: str = "bf16-mixed") -> pl.Trainer:
    """The Trainer of the issue: one device, ``precision``, cuDNN benchmark, every extra off."""
    return pl.Trainer(
        accelerator=setup.accelerator,
        devices=1,
        precision=precision,
        benchmark=True,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def lit_transfer_trainer(setup: Setup, steps: int, timer: Callback, run_dir: str) -> pl.Trainer:
    """A Trainer with the callbacks, logger and checkpoint IO that ``LitTransferCLI.instantiate_trainer`` adds.

    As ``lit_transfer_trainer`` in ``benchmarks/run.py`` (rebuilt by hand: the CLI needs an image-folder data
    module), on the GPU with bf16-mixed. ``RunCheckpoint`` monitors ``train_loss`` (no validation loop) and, like
    ``TensorBoardReports``' first-batch grid, acts outside the timed steps.
    """
    callbacks: list[Callback] = [
        timer,
        PredictionWriter(),
        SigtermHandler(),
        EpochSeeder(42),
        LearningRateMonitor(logging_interval="epoch"),
        TensorBoardReports(),
        ThrottledProgressBar(),
        RunCheckpoint(dirpath=os.path.join(run_dir, "checkpoints"), monitor="train_loss", mode="min", save_last=True),
    ]
    return pl.Trainer(
        accelerator=setup.accelerator,
        devices=1,
        precision="bf16-mixed",
        benchmark=True,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(save_dir=run_dir, name="bench", default_hp_metric=False),
        plugins=[AsyncAtomicCheckpointIO()],
        use_distributed_sampler=False,
        callbacks=callbacks,
    )


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


# --- 1. parity, 2. compile, 3. precision -----------------------------------------------------------------------------


def bench_parity(setup: Setup) -> list[dict[str, Any]]:
    """Section ``parity``: ours (bare / lit_transfer defaults) ÷ a plain loop, bf16-mixed + channels-last, eager."""
    warmup, steps = setup.warmup, setup.steps
    section = f"G1 parity {setup.backbone} bf16+CL eager (img/s, b{setup.batch} {setup.size}px)"
    batches = SyntheticBatches(setup, warmup + steps)
    plain = PlainLoop(setup, compiled=False)
    model = ours_model(setup, channels_last=True, compiled=False)
    bare_step = ours_model(setup, channels_last=True, compiled=False, cls=BookkeepingFreeClassifier)

    def defaults() -> float:
        timer = StepTimer(warmup, steps, setup.torch_device)
        run_dir = tempfile.mkdtemp(prefix="lt_gpu_run_")  # removed after each call: ResNet50 checkpoints are big
        try:
            fit_quiet(lit_transfer_trainer(setup, warmup + steps, timer, run_dir), model, train_dataloaders=batches)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return timer.rate() * setup.batch

    rates = interleaved(
        {
            "plain loop": lambda: plain(batches, warmup, steps),
            "ours (bare Trainer)": ours_synthetic(setup, model, warmup, steps),
            "ours (lit_transfer defaults)": defaults,
            "ours, step = forward + loss only (diagnostic)": ours_synthetic(setup, bare_step, warmup, steps),
        },
        setup.rounds,
    )
    cmd = _cmd(setup, "parity")
    diagnostic = {k: rates[k] for k in ("ours (bare Trainer)", "ours, step = forward + loss only (diagnostic)")}
    return (
        ratio_rows(section, rates, "plain loop", cmd, GOAL_PARITY)
        + ratio_rows(section, diagnostic, "ours (bare Trainer)", cmd)
        + rate_rows(section, rates, setup, cmd)
    )


def bench_compile(setup: Setup) -> list[dict[str, Any]]:
    """Section ``compile``: the parity pair with ``torch.compile`` on both sides; and ours compiled ÷ ours eager."""
    warmup, steps = setup.warmup, setup.steps
    section = f"G2 parity {setup.backbone} bf16+CL+compile (img/s, b{setup.batch} {setup.size}px)"
    batches = SyntheticBatches(setup, warmup + steps)
    plain = PlainLoop(setup, compiled=True)
    compiled = ours_model(setup, channels_last=True, compiled=True)
    eager = ours_model(setup, channels_last=True, compiled=False)
    rates = interleaved(
        {
            "plain loop + compile": lambda: plain(batches, warmup, steps),
            "ours + compile": ours_synthetic(setup, compiled, warmup, steps),
            "ours eager": ours_synthetic(setup, eager, warmup, steps),
        },
        setup.rounds,
    )
    cmd = _cmd(setup, "compile")
    pair = {k: rates[k] for k in ("plain loop + compile", "ours + compile")}
    speedup = {k: rates[k] for k in ("ours eager", "ours + compile")}
    return (
        ratio_rows(section, pair, "plain loop + compile", cmd, GOAL_PARITY)
        + ratio_rows(section, speedup, "ours eager", cmd)
        + rate_rows(section, rates, setup, cmd)
    )


def bench_precision(setup: Setup) -> list[dict[str, Any]]:
    """Section ``precision``: ours bf16-mixed (contiguous, then + channels-last) ÷ ours fp32 (``32-true``), eager."""
    warmup, steps = setup.warmup, setup.steps
    section = f"G3 precision {setup.backbone} ours eager (img/s, b{setup.batch} {setup.size}px)"
    fp32 = ours_model(setup, channels_last=False, compiled=False)
    bf16 = ours_model(setup, channels_last=False, compiled=False)
    bf16_cl = ours_model(setup, channels_last=True, compiled=False)
    rates = interleaved(
        {
            "fp32 (32-true)": ours_synthetic(setup, fp32, warmup, steps, precision="32-true"),
            "bf16-mixed": ours_synthetic(setup, bf16, warmup, steps),
            "bf16-mixed + channels_last": ours_synthetic(setup, bf16_cl, warmup, steps),
        },
        setup.rounds,
    )
    cmd = _cmd(setup, "precision")
    cl = {k: rates[k] for k in ("bf16-mixed", "bf16-mixed + channels_last")}
    return (
        ratio_rows(section, rates, "fp32 (32-true)", cmd)
        + ratio_rows(section, cl, "bf16-mixed", cmd)
        + rate_rows(section, rates, setup, cmd)
    )


# --- 4. data stall ---------------------------------------------------------------------------------------------------


def make_photo_jpegs(folder: Path, classes: int, total: int, unique: int, width: int, height: int) -> int:
    """``total`` photo-like JPEGs in ``classes`` class folders: ``unique`` distinct files, hard-linked to ``total``.

    Content is smooth (low-resolution random colour fields, upscaled bicubically, with a gradient), saved at quality
    90, so decoding costs what a photo of that size costs. Repeating files only saves generating them: the decoder
    does the same work for every copy (and the OS page cache serves them, as it serves a data set that fits in RAM).
    Returns the number of distinct files.
    """
    rng = np.random.default_rng(0)
    pool = folder / ".unique"  # a hidden folder: never a class
    pool.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    sources = []
    for i in range(min(unique, total)):
        small = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
        img = np.clip(img * 0.8 + ramp, 0, 255).astype(np.uint8)
        path = pool / f"u{i:05d}.jpg"
        Image.fromarray(img, "RGB").save(path, quality=90)
        sources.append(path)
    for c in range(classes):
        (folder / f"c{c:04d}").mkdir(exist_ok=True)
    for i in range(total):
        target = folder / f"c{i % classes:04d}" / f"img_{i:07d}.jpg"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:  # a file system without hard links
            shutil.copyfile(sources[i % len(sources)], target)
    return len(sources)


class JpegBytesDataset(Dataset):
    """Items ``(uint8 1-D tensor of the file's bytes, label)``: the GPU-decode loader's workers only read files."""

    def __init__(self, root: Path, paths: Sequence[str], targets: Sequence[int]) -> None:
        self.root, self.paths, self.targets = Path(root), list(paths), list(targets)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index = item[0] if isinstance(item, tuple) else item
        return torchvision.io.read_file(str(self.root / self.paths[index])), self.targets[index]


def collate_bytes(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's encoded files as one flat uint8 tensor, their lengths, and the labels.

    One tensor per batch, not one per file: each tensor a worker returns travels through its own shared-memory
    file descriptor, and a list of 256 small tensors per batch failed here with ``OSError: [Errno 9] Bad file
    descriptor`` in ``resource_sharer`` (and would keep thousands of descriptors in flight with 16 workers).
    """
    files = [i[0] for i in items]
    lengths = torch.tensor([len(f) for f in files], dtype=torch.long)
    return torch.cat(files), lengths, torch.tensor([i[1] for i in items], dtype=torch.long)


def random_resized_crop_flip(image: torch.Tensor, size: int) -> torch.Tensor:
    """The ``standard`` augmentation on a decoded (device) uint8 CHW image: RandomResizedCrop + horizontal flip.

    Crop parameters are drawn on the CPU (no device sync); the crop, antialiased resize and flip run where the image
    is (torchvision resizes uint8 CUDA images through float32).
    """
    top, left, height, width = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
    out = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    return TF.horizontal_flip(out) if torch.rand(1).item() < 0.5 else out


class GpuDecodeDataModule(ImageFolderDataModule):
    """``ImageFolderDataModule`` whose workers only read JPEG bytes; the main process decodes on the training device.

    ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes the whole batch with nvJPEG, then every image is
    cropped, resized and flipped on the GPU. Runs in ``on_before_batch_transfer`` (main process, before Lightning's
    device transfer, which is then a no-op for the images). The base class's loader cannot be reused: its
    ``collate_fn`` is fixed and stacks equal-size images.
    """

    def make_dataset(self, root: str | Path, paths: Sequence[str], targets: Sequence[int], split: str) -> Dataset:
        """Byte-reading dataset for ``train``; the base class's datasets otherwise."""
        if split != "train":
            return super().make_dataset(root, paths, targets, split)
        return JpegBytesDataset(Path(root), paths, targets)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of encoded files, loaded as the base class loads them (sampler, workers, pinning)."""
        dataset = self._datasets["train"]
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), True, self.seed),
            num_workers=self.num_workers,
            collate_fn=collate_bytes,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            timeout=self.loader_timeout if self.num_workers > 0 else 0,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Decode and augment the batch on the training device (on a side CUDA stream)."""
        flat, lengths, targets = batch
        files = list(torch.split(flat, lengths.tolist()))  # contiguous 1-D CPU views, as decode_jpeg wants
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return self._decode(files, device), targets
        # The side stream lets decoding overlap the previous step still queued on the training stream, and keeps
        # the decoder away from memory that stream still uses: nvJPEG writes its outputs from a private stream
        # that does not wait for the caller's stream (pytorch/vision#9606), so on the training stream it could
        # overwrite freed activations that queued kernels have yet to read.
        main = torch.cuda.current_stream(device)
        stream = getattr(self, "_decode_stream", None)
        if stream is None:
            stream = self._decode_stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):  # reads only CPU bytes: no need to wait for the training stream
            images = self._decode(files, device)
        main.wait_stream(stream)
        images.record_stream(main)  # allocated on the side stream, read by the training stream
        return images, targets

    def _decode(self, files: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        decoded = torchvision.io.decode_jpeg(files, mode=torchvision.io.ImageReadMode.RGB, device=device)
        return torch.stack([random_resized_crop_flip(img, self.image_size) for img in decoded])


def bench_stall(setup: Setup) -> list[dict[str, Any]]:
    """Section ``stall``: ours fed by the real JPEG loader (PIL; and GPU decode) ÷ ours fed synthetic device batches.

    One model (bf16-mixed + channels-last + compile, as ``configs/trainer/gpu_fast.yaml``) serves every variant.
    The loader's workers deliver their first batches in a burst, so the warm-up is at least 2 batches per worker
    (``prefetch_factor``) and the timed window at least 4 per worker.
    """
    workers = setup.workers
    warmup = max(setup.warmup, 2 * workers)
    steps = max(setup.steps, 4 * workers)
    total_images = (warmup + steps + 1) * setup.batch
    root = Path(setup.data_dir) if setup.data_dir else Path(temp_dir("lt_gpu_jpegs_"))
    model = ours_model(setup, channels_last=True, compiled=True)
    variants: dict[str, Callable[[], float]] = {
        "synthetic on-device batches": ours_synthetic(setup, model, warmup, steps),
    }
    details: dict[str, Any] = {"workers": workers, "warmup": warmup, "steps": steps, "images": total_images}

    def loader_variant(dm: ImageFolderDataModule) -> Callable[[], float]:
        def run() -> float:
            timer = StepTimer(warmup, steps, setup.torch_device)
            fit_quiet(bare_trainer(setup, warmup + steps, [timer]), model, datamodule=dm)
            return timer.rate() * setup.batch

        return run

    for width, height in setup.jpeg_sizes:
        folder = root / f"{width}x{height}"
        # as many distinct files as 500x375 would have, scaled down by pixel count for big images (generation time)
        distinct = min(setup.unique_images, max(16, round(setup.unique_images * 500 * 375 / (width * height))))
        stamp = f"{total_images} images, {setup.classes} classes, {distinct} distinct"
        if not (folder / ".made").is_file() or (folder / ".made").read_text() != stamp:  # (re)generate
            t0 = time.perf_counter()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            unique = make_photo_jpegs(folder, setup.classes, total_images, distinct, width, height)
            (folder / ".made").write_text(stamp)
            print(f"  generated {total_images} JPEGs ({unique} distinct) of {width}x{height} in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)  # fmt: skip
        common = {
            "train_dir": str(folder),
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "image_size": setup.size,
            "batch_size": setup.batch,
            "num_workers": workers,
            "augmentation": "standard",
            "seed": 0,
            "loader_timeout": LOADER_TIMEOUT_S,
        }
        dm = ImageFolderDataModule(**common)
        if dm.num_classes != setup.classes:
            raise RuntimeError(f"{folder} has {dm.num_classes} class folders, expected {setup.classes}")
        variants[f"{width}x{height} JPEG, PIL in {workers} workers"] = loader_variant(dm)
        if setup.gpu_decode:
            where = "GPU" if setup.torch_device.type == "cuda" else "CPU (smoke)"
            variants[f"{width}x{height} JPEG, decode_jpeg on {where}"] = loader_variant(GpuDecodeDataModule(**common))
        details[f"{width}x{height} bytes/file"] = round(
            statistics.mean(p.stat().st_size for p in (folder / ".unique").glob("*.jpg"))
        )
    section = f"G4 data stall {setup.backbone} bf16+CL+compile (img/s, b{setup.batch} {setup.size}px)"
    rates = interleaved(variants, setup.rounds)
    cmd = _cmd(setup, "stall")
    rows = ratio_rows(section, rates, "synthetic on-device batches", cmd, GOAL_STALL) + rate_rows(
        section, rates, setup, cmd
    )
    for row in rows:
        row["details"] = details
    return rows


# --- driver ----------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Setup], list[dict[str, Any]]]] = {
    "parity": bench_parity,
    "compile": bench_compile,
    "precision": bench_precision,
    "stall": bench_stall,
}


def _cmd(setup: Setup, section: str) -> str:
    return f"{setup.command} --only {section}"


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def build_setup(args: argparse.Namespace) -> Setup:
    """Settings from the flags: GPU defaults, ``--quick`` fewer steps, ``--smoke`` a tiny CPU run."""
    if args.smoke:
        defaults = {"backbone": "resnet18", "batch": 4, "size": 32, "classes": 10, "warmup": 1, "steps": 2, "rounds": 1}
        defaults |= {"jpeg_sizes": "96x72,300x200", "unique": 4, "workers": min(2, default_num_workers())}
        device = "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; run with --smoke to check it on the CPU")
        defaults = {"backbone": "resnet50", "batch": 256, "size": 224, "classes": 1000}
        defaults |= {"warmup": 5, "steps": 20, "rounds": 3} if args.quick else {"warmup": 10, "steps": 50, "rounds": 5}
        defaults |= {"jpeg_sizes": "500x375" if args.quick else "500x375,3000x2000", "unique": 256}
        defaults["workers"] = default_num_workers()
        device = "cuda"

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    compile_options: dict[str, Any] = {}
    if args.compile_mode:
        compile_options["mode"] = args.compile_mode
    if args.smoke:
        compile_options["backend"] = "eager"  # no Inductor C++/Triton build on the CPU
    flags = ["--smoke"] if args.smoke else []
    flags += ["--quick"] if args.quick else []
    for name in ("backbone", "batch", "size", "warmup", "steps", "rounds", "workers", "jpeg_sizes", "peak_tflops"):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"--{name.replace('_', '-')} {value}")
    if args.optimizer != "adamw":
        flags.append(f"--optimizer {args.optimizer}")
    if args.compile_mode:
        flags.append(f"--compile-mode {args.compile_mode}")
    if args.no_gpu_decode:
        flags.append("--no-gpu-decode")
    setup = Setup(
        device=device,
        smoke=args.smoke,
        quick=args.quick,
        backbone=pick("backbone"),
        batch=pick("batch"),
        size=pick("size"),
        classes=defaults["classes"],
        warmup=max(1, pick("warmup")),
        steps=max(1, pick("steps")),
        rounds=max(1, pick("rounds")),
        optimizer=args.optimizer,
        lr=args.lr,
        compile_options=compile_options,
        workers=pick("workers"),
        jpeg_sizes=[_size(s) for s in pick("jpeg_sizes").split(",") if s],
        gpu_decode=not args.no_gpu_decode,
        unique_images=defaults["unique"],
        data_dir=args.data_dir,
        command=" ".join(["python benchmarks/gpu.py", *flags]),
    )
    return setup


def describe_machine(setup: Setup, peak_source: str) -> dict[str, Any]:
    """Hardware and software of the run, for the JSON and the markdown."""
    meta: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": pl.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpus_available": default_num_workers(),
        "device": setup.device,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "peak_bf16_tflops": setup.peak_tflops,
        "peak_source": peak_source,
        "flops_per_image": setup.flops_per_image,
        "flops_definition": (
            f"{RESNET50_GFLOP_PER_IMAGE} GFLOP x ({setup.size}/224)^2 (ResNet50, the issue's definition)"
            if setup.backbone == "resnet50"
            else "counted by torch.utils.flop_counter (forward + backward)"
        ),
    }
    if setup.torch_device.type == "cuda":
        props = torch.cuda.get_device_properties(setup.torch_device)
        meta |= {
            "gpu_name": torch.cuda.get_device_name(setup.torch_device),
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_sm_count": props.multi_processor_count,
            "gpu_count": torch.cuda.device_count(),
        }
        with contextlib.suppress(Exception):
            query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"]
            meta["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    return meta


def _fmt(value: float | None, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The ratios, then the rates with their MFU, as fixed-width tables."""
    print(f"{'section':<62} {'ratio':<64} {'value':>7} {'goal':>6} {'rate':>9} {'base':>9}")
    for r in rows:
        if r["kind"] == "ratio":
            goal = "" if r["goal"] is None else f"{r['goal']:.2f}{' ok' if r['meets_goal'] else ' NO'}"
            print(f"{r['section']:<62} {r['row']:<64} {r['ratio']:>7.3f} {goal:>6} "
                  f"{r['rate']:>9.1f} {r['base_rate']:>9.1f}")  # fmt: skip
    print()
    print(f"{'section':<62} {'variant':<52} {'img/s':>9} {'MFU %':>6} {'÷MLPerf H100':>12} {'÷tuned A100':>11}")
    for r in rows:
        if r["kind"] == "rate":
            mfu = _fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f")
            print(f"{r['section']:<62} {r['row']:<52} {r['img_s']:>9.1f} {mfu:>6} "
                  f"{r['vs_mlperf_h100']:>12.3f} {r['vs_tuned_a100']:>11.3f}")  # fmt: skip
    for r in rows:
        if r["kind"] == "error":
            print(f"ERROR in {r['section']}: {r['error']}")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], setup: Setup) -> str:
    """A snippet for ``benchmarks/RESULTS.md``: machine line, ratio table, rate/MFU table."""
    gpu = meta.get("gpu_name", "CPU (smoke run: figures meaningless)")
    peak = _fmt(setup.peak_tflops, ".4g")
    lines = [
        f"**GPU run:** {gpu}, {meta['cpus_available']} CPU cores; torch {meta['torch']} (CUDA {meta['cuda']}, cuDNN "
        f"{meta['cudnn']}), torchvision {meta['torchvision']}, Lightning {meta['lightning']}. `{setup.command}`: "
        f"{setup.backbone}, batch {setup.batch}, {setup.size} px, {setup.optimizer}, {setup.warmup} warm-up + "
        f"{setup.steps} timed steps per variant call, {setup.rounds} round(s) after a discarded warm-up round. "
        f"Peak bf16 {peak} TFLOPS ({meta['peak_source']}); {setup.flops_per_image / 1e9:.1f} GFLOP per image.",
        "",
        "| # | ratio | value | per-round ratios | goal | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "ratio":
            continue
        number, _, title = r["section"].partition(" ")
        goal = "—" if r["goal"] is None else f"≥ {r['goal']:.2f} {'✓' if r['meets_goal'] else '✗'}"
        per_round = ", ".join(f"{x:.3f}" for x in r["ratios"])
        lines.append(
            f"| {number} | {title.split(' (')[0]}: {r['row'].replace(' / ', ' ÷ ')} (img/s) | **{r['ratio']:.3f}** "
            f"| {per_round} | {goal} | `{r['command']}` |"
        )
    lines += [
        "",
        "| # | variant | img/s | MFU | ÷ MLPerf H100 (7,150) | ÷ tuned A100 (2,470) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "rate":
            number = r["section"].split(" ")[0]
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            lines.append(
                f"| {number} | {r['row']} | {r['img_s']:.0f} | {mfu} | {r['vs_mlperf_h100']:.3f} "
                f"| {r['vs_tuned_a100']:.3f} |"
            )
    lines.append("")
    lines.append(f"Published ResNet-50 training runs reach {PUBLISHED_MFU[0]:.0%}–{PUBLISHED_MFU[1]:.0%} MFU.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the chosen sections, print the tables and markdown, write the JSON; 1 if a section failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds; 500x375 JPEGs only")
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU in seconds (tiny model)")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--backbone", help="default resnet50 (smoke: resnet18)")
    parser.add_argument("--batch", type=int, help="images per step (default 256)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 224)")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant call (default 10, quick 5)")
    parser.add_argument("--steps", type=int, help="timed steps per variant call (default 50, quick 20)")
    parser.add_argument("--rounds", type=int, help="measured rounds after the warm-up round (default 5, quick 3)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="the same for both sides")
    parser.add_argument("--lr", type=float, default=1e-4, help="small: random data must not diverge to NaN")
    parser.add_argument("--compile-mode", help="torch.compile mode for both sides (default: torch's default)")
    parser.add_argument("--workers", type=int, help="loader workers (default: the cores this process may use)")
    parser.add_argument("--jpeg-sizes", help="WxH,... of the generated JPEGs (default 500x375,3000x2000)")
    parser.add_argument("--no-gpu-decode", action="store_true", help="skip the decode_jpeg(device='cuda') rows")
    parser.add_argument("--data-dir", help="keep the generated JPEGs here (reused when present) instead of a temp dir")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s, overriding the table")
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results_gpu.json)")
    args = parser.parse_args(argv)
    setup = build_setup(args)
    peak_source = "--peak-tflops"
    if args.peak_tflops is not None:
        setup.peak_tflops = args.peak_tflops
    elif setup.torch_device.type == "cuda":
        setup.peak_tflops, peak_source = peak_bf16_tflops(torch.cuda.get_device_name(setup.torch_device))
    else:
        peak_source = "CPU: no peak, no MFU"
    counted = counted_flops_per_image(setup)
    scale = (setup.size / 224) ** 2
    setup.flops_per_image = RESNET50_GFLOP_PER_IMAGE * 1e9 * scale if setup.backbone == "resnet50" else counted
    setup.extra["counted_flops_per_image"] = counted
    if setup.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    output = args.output or (
        Path(tempfile.gettempdir()) / "results_gpu_smoke.json" if setup.smoke else RESULTS
    )  # fmt: skip
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failed = False
    for name in args.only:
        t0 = time.perf_counter()
        print(f"[{name}]", file=sys.stderr)
        if setup.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            rows += SECTIONS[name](setup)
        except Exception as err:  # record it, go on with the other sections, exit 1 at the end
            failed = True
            traceback.print_exc()
            rows.append({"section": name, "kind": "error", "error": f"{type(err).__name__}: {err}"})
        with contextlib.suppress(Exception):  # graphs torch.compile built so far: a recompile per round would show
            from torch._dynamo.utils import counters

            setup.extra[f"{name}_dynamo_unique_graphs"] = counters["stats"]["unique_graphs"]
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if setup.torch_device.type == "cuda" else None
        setup.extra[f"{name}_max_memory_gib"] = None if peak_mem is None else round(peak_mem, 2)
        gc.collect()
        if setup.torch_device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[{name}] {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    meta = describe_machine(setup, peak_source)
    meta |= {
        "quick": setup.quick,
        "smoke": setup.smoke,
        "settings": asdict(setup),
        "wall_s": round(time.perf_counter() - start, 1),
        "reference": {
            "mlperf_h100_img_s": MLPERF_H100_IMG_S,
            "tuned_a100_img_s": TUNED_A100_IMG_S,
            "published_mfu": PUBLISHED_MFU,
            "goal_parity": GOAL_PARITY,
            "goal_stall": GOAL_STALL,
        },
        "note": "ratios are medians of per-round ratios; variants interleaved, first round discarded",
    }
    print_table(rows)
    output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    print("\n--- markdown for benchmarks/RESULTS.md ---\n")
    print(markdown(rows, meta, setup))
    print(f"\nwrote {output} in {meta['wall_s']}s{' (with errors)' if failed else ''}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
