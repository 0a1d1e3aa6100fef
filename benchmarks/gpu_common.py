"""GPU benchmark settings, reference figures and measurement helpers (see ``benchmarks/gpu.py``).

Every ``gpu_*`` module imports it first: it puts the repository on ``sys.path`` and quiets Lightning's messages.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from run import interleaved, temp_dir  # noqa: E402, F401  (benchmarks/run.py: the same A/B/A/B protocol)

from lit_transfer.trainer_defaults import build_trainer  # noqa: E402

warnings.filterwarnings("ignore")  # Lightning tips, torchvision's decode_jpeg/read_file deprecation notices
for _name in ("lightning.pytorch", "lightning.fabric", "lit_transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # parameter tables, "GPU available", tips


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
    """The Trainer ``LitTransferCLI`` builds (callbacks, logger, checkpoint IO): ``trainer_defaults.build_trainer``.

    As ``lit_transfer_trainer`` in ``benchmarks/run.py`` (built without the CLI, which needs an image-folder data
    module), on the GPU with bf16-mixed. ``RunCheckpoint`` monitors ``train_loss`` (no validation loop) and, like
    ``TensorBoardReports``' first-batch grid, acts outside the timed steps.
    """
    checkpoint = {
        "dirpath": os.path.join(run_dir, "checkpoints"),
        "monitor": "train_loss",
        "mode": "min",
        "filename": None,  # Lightning's own file names, as before the CLI's defaults were shared
        "auto_insert_metric_name": True,
    }
    return build_trainer(
        run_dir,
        "bench",
        seed=42,
        callbacks=[timer],
        checkpoint=checkpoint,
        accelerator=setup.accelerator,
        devices=1,
        precision="bf16-mixed",
        benchmark=True,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def _cmd(setup: Setup, section: str) -> str:
    return f"{setup.command} --only {section}"
