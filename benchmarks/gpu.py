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

The code is split by concept: ``gpu_common.py`` (settings, reference figures, timing helpers, the Trainers),
``gpu_models.py`` (ours, the plain loop, synthetic batches), ``gpu_parity.py`` (sections ``parity``, ``compile``,
``precision``), ``gpu_stall.py`` (section ``stall``), ``gpu_report.py`` (machine description, tables, markdown); this
file parses the flags and runs the sections.

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
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_common import (  # noqa: E402
    GOAL_PARITY,
    GOAL_STALL,
    MLPERF_H100_IMG_S,
    PUBLISHED_MFU,
    RESNET50_GFLOP_PER_IMAGE,
    TUNED_A100_IMG_S,
    Setup,
    peak_bf16_tflops,
)
from gpu_models import (  # noqa: E402
    counted_flops_per_image,
)
from gpu_parity import (  # noqa: E402
    bench_compile,
    bench_parity,
    bench_precision,
)
from gpu_report import (  # noqa: E402
    describe_machine,
    markdown,
    print_table,
)
from gpu_stall import (  # noqa: E402
    bench_stall,
)

from lit_transfer.data.base import default_num_workers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results_gpu.json"


# --- driver ----------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Setup], list[dict[str, Any]]]] = {
    "parity": bench_parity,
    "compile": bench_compile,
    "precision": bench_precision,
    "stall": bench_stall,
}


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


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the chosen sections, print the tables and markdown, write the JSON; 1 if a section failed."""
    args = build_parser().parse_args(argv)
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
