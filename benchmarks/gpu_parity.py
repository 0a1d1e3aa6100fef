"""GPU benchmark sections ``parity``, ``compile`` and ``precision``: ours ÷ a plain loop on synthetic batches."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from gpu_common import (
    GOAL_PARITY,
    Setup,
    StepTimer,
    _cmd,
    fit_quiet,
    interleaved,
    lit_transfer_trainer,
    rate_rows,
    ratio_rows,
)
from gpu_models import (
    BookkeepingFreeClassifier,
    PlainLoop,
    SyntheticBatches,
    ours_model,
    ours_synthetic,
)

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
