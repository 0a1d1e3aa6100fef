"""GPU benchmark report: the machine's description, the result tables and the markdown for ``RESULTS.md``."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from gpu_common import (
    PUBLISHED_MFU,
    RESNET50_GFLOP_PER_IMAGE,
    Setup,
)

from lit_transfer.data.base import default_num_workers


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
