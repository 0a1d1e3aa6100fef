"""lit_transfer CPU benchmarks: every figure is a ratio of two variants measured in the same run.

Run ``python benchmarks/run.py [--quick] [--only SECTION ...]``. Variants are interleaved (A/B/A/B per round), the
first round is a discarded warm-up, and each reported ratio is the median of the per-round ratios. Never run by the
unit tests. Writes ``benchmarks/results.json``. The sections ``loader``, ``transition`` and ``scaling`` are in
``bench_loop.py``, ``cache`` in ``bench_cache.py``, ``small_fit`` and ``small_process`` in ``bench_small.py``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import io
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.modules.setdefault("run", sys.modules[__name__])  # bench_loop.py imports the helpers below as ``run``

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from PIL import Image  # noqa: E402

from lit_transfer.data.base import BaseImageDataModule, EpochSampler  # noqa: E402
from lit_transfer.data.images import load_rgb  # noqa: E402
from lit_transfer.features import FeatureDataset, FusedFeatureDataset, keep_batch  # noqa: E402
from lit_transfer.models import TransferClassifier  # noqa: E402
from lit_transfer.models.backbones import Backbone, register_backbone  # noqa: E402
from lit_transfer.trainer_defaults import build_trainer  # noqa: E402

warnings.filterwarnings("ignore")
for _name in ("lightning.pytorch", "lightning.fabric", "lit_transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # parameter tables, "GPU available", tips
RESULTS = Path(__file__).resolve().parent / "results.json"
NUM_CLASSES = 102
FUSED_STEPS = 20  # batches per Lightning step of the fused variant: its warm-up is the plain loop's 20 steps
FEATURE_SHAPE = (1, 16, 32)  # 512 cached features, shaped as a 1-channel "image" so TensorBoardReports can grid it


@register_backbone("bench_features")
def _features_backbone() -> Backbone:
    """Identity backbone over cached features: TransferClassifier then trains only its 512 → 102 head."""
    return Backbone(nn.Flatten(), 512, mean=(0.0,), std=(1.0,))


def temp_dir(prefix: str) -> str:
    """A temporary folder removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# --- measurement helpers ---------------------------------------------------------------------------------------------


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round in A/B/A/B order; round 0 is warm-up and dropped. Values are rates.

    Each call's value and duration go to stderr, so a long run shows its progress.
    """
    out: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 1):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # alternate order to cancel drift
        for name in order:
            gc.collect()  # collect the previous variant's garbage before the clock runs, not during it
            t0 = time.perf_counter()
            value = variants[name]()
            print(f"  round {r}{' (warm-up)' if r == 0 else ''}: {name}: {value:.4g} "
                  f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)  # fmt: skip
            if r > 0:
                out[name].append(value)
    return out


def ratio_rows(section: str, rates: dict[str, list[float]], base: str, command: str) -> list[dict[str, Any]]:
    """Per-round ratios of every variant to ``base``; the median ratio is the reported figure."""
    rows = []
    for name, values in rates.items():
        if name == base:
            continue
        ratios = [v / b for v, b in zip(values, rates[base], strict=True)]
        rows.append(
            {
                "section": section,
                "row": f"{name} / {base}",
                "ratio": statistics.median(ratios),
                "ratios": [round(x, 4) for x in ratios],
                "rate": statistics.median(values),
                "base_rate": statistics.median(rates[base]),
                "command": command,
            }
        )
    return rows


def with_goal(rows: list[dict[str, Any]], row: str, goal: str) -> list[dict[str, Any]]:
    """Mark the row named ``row`` with its goal (``">= 1.1"`` or ``"<= 1.1"``) and whether its ratio meets it."""
    op, value = goal.split()
    for r in rows:
        if r["row"] == row:
            r["goal"] = goal
            r["goal_met"] = r["ratio"] >= float(value) if op == ">=" else r["ratio"] <= float(value)
    return rows


class StepTimer(Callback):
    """Wall time from the start of training batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock at the first timed batch."""
        if idx == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop the clock after the last batch."""
        if idx == self.warmup + self.steps - 1:
            self.t1 = time.perf_counter()

    def rate(self) -> float:
        """Timed steps per second."""
        return self.steps / (self.t1 - self.t0)


class OptimizerStepTimer(Callback):
    """Wall time from the batch end at optimizer step ``warmup`` to the one at step ``warmup + steps``.

    For fused steps, where one Lightning batch is several optimizer steps; the same clock as :class:`StepTimer`.
    """

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = 0.0
        self.done = self.timed = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Start the clock once the warm-up steps are done, stop it after the last timed step."""
        if not self.t0 and trainer.global_step >= self.warmup:
            self.t0, self.done = time.perf_counter(), trainer.global_step
        elif self.t0 and not self.t1 and trainer.global_step >= self.warmup + self.steps:
            self.t1 = time.perf_counter()
            self.timed = trainer.global_step - self.done

    def rate(self) -> float:
        """Timed optimizer steps per second."""
        return self.timed / (self.t1 - self.t0)


def bare_trainer(steps: int, callbacks: list[Callback]) -> pl.Trainer:
    """Plain Lightning with every extra off: no logger, checkpointing, progress bar or model summary."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def lit_transfer_trainer(
    steps: int | None,
    timer: Callback,
    run_dir: str,
    seed: int = 42,
    monitor: str = "train_loss",
    last: list[Callback] | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """The Trainer ``LitTransferCLI`` builds (callbacks, logger, checkpoint IO): ``trainer_defaults.build_trainer``.

    Built without ``LitTransferCLI(args=..., run=False)``: the CLI needs an image-folder data module, while the step
    benchmark feeds cached features. Without a validation loop the RunCheckpoint monitors ``train_loss``; with
    ``monitor="val_acc"`` it is the CLI's default (mode max, ``epoch…-val_acc…`` file names). It only acts at epoch
    end. ``timer`` comes first among the callbacks, ``last`` after the defaults (Lightning still moves the checkpoint
    callback to the very end); ``trainer_kwargs`` override the Trainer arguments.
    """
    checkpoint: dict[str, Any] = {"dirpath": os.path.join(run_dir, "checkpoints")}
    if monitor != "val_acc":  # Lightning's own file names, as before the CLI's defaults were shared
        mode = "min" if monitor.endswith("loss") else "max"
        checkpoint.update(monitor=monitor, mode=mode, filename=None, auto_insert_metric_name=True)
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": steps,
        "num_sanity_val_steps": 0,
    }
    return build_trainer(
        run_dir,
        "bench",
        seed=seed,
        callbacks=[timer],
        checkpoint=checkpoint,
        callbacks_after=last or (),
        **{**kwargs, **trainer_kwargs},
    )


def fit_rate(trainer: pl.Trainer, model: pl.LightningModule, loader: DataLoader, timer: StepTimer) -> float:
    """Fit quietly and return the timed steps per second."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, train_dataloaders=loader)
    return timer.rate()


# --- 1. step overhead ------------------------------------------------------------------------------------------------


class TinyHead(pl.LightningModule):
    """The minimal LightningModule: a linear head, cross-entropy, AdamW, nothing logged."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(512, NUM_CLASSES)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of one batch."""
        return F.cross_entropy(self.head(batch[0].flatten(1)), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW as TransferClassifier's default."""
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)


def bench_step_overhead(quick: bool) -> list[dict[str, Any]]:
    """Section 1: Lightning / lit_transfer steps/s over a plain loop on a 512 → 102 head, batch 64, 1 thread."""
    warmup, steps = 20, (300 if quick else 1000)
    total = warmup + steps
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(total * 64, *FEATURE_SHAPE, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (total * 64,), generator=gen)
    loader = DataLoader(TensorDataset(feats, labels), batch_size=64, shuffle=False, num_workers=0)
    tmp = temp_dir("lt_bench_")

    def plain() -> float:
        torch.manual_seed(0)
        head = nn.Linear(512, NUM_CLASSES)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
        t0 = 0.0
        for i, (x, y) in enumerate(loader):
            if i == warmup:
                t0 = time.perf_counter()
            loss = F.cross_entropy(head(x.flatten(1)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps / (time.perf_counter() - t0)

    def transfer_model() -> TransferClassifier:
        torch.manual_seed(0)
        return TransferClassifier(NUM_CLASSES, backbone="bench_features")

    def lightning_tiny() -> float:
        timer = StepTimer(warmup, steps)
        return fit_rate(bare_trainer(total, [timer]), TinyHead(), loader, timer)

    def lightning_transfer() -> float:
        timer = StepTimer(warmup, steps)
        return fit_rate(bare_trainer(total, [timer]), transfer_model(), loader, timer)

    def lit_transfer_defaults() -> float:
        timer = StepTimer(warmup, steps)
        return fit_rate(lit_transfer_trainer(total, timer, tmp), transfer_model(), loader, timer)

    # the real cached-feature path: a FeatureCache entry served by the data module's loader settings
    entry = Path(tmp) / "entry"
    entry.mkdir()
    np.save(entry / "features.npy", feats.flatten(1).numpy())
    np.save(entry / "valid.npy", np.ones(len(labels), dtype=bool))
    cached = FeatureDataset(entry, labels.tolist(), {})
    cached_loader = DataLoader(
        cached, batch_size=64, sampler=EpochSampler(len(cached), False, 0), num_workers=0, collate_fn=keep_batch
    )

    def lit_transfer_cached() -> float:
        timer = StepTimer(warmup, steps)
        return fit_rate(lit_transfer_trainer(total, timer, tmp), transfer_model(), cached_loader, timer)

    # --cache_features.fused_steps: the cache callback serves the split as FusedFeatureDataset and switches the model
    # to manual optimization; done here by hand, as the loader is not a data module's (warm-up = one fused batch)
    fused_loader = DataLoader(
        FusedFeatureDataset(cached, 64, FUSED_STEPS),
        batch_size=64 * FUSED_STEPS,
        sampler=EpochSampler(len(cached), False, 0),
        num_workers=0,
        collate_fn=keep_batch,
    )

    def lit_transfer_fused() -> float:
        timer = OptimizerStepTimer(warmup, steps)
        model = transfer_model()
        model.automatic_optimization = False
        return fit_rate(lit_transfer_trainer(None, timer, tmp), model, fused_loader, timer)

    rates = interleaved(
        {
            "plain loop": plain,
            "Lightning bare + TinyHead": lightning_tiny,
            "Lightning bare + TransferClassifier": lightning_transfer,
            "lit_transfer defaults + TransferClassifier": lit_transfer_defaults,
            "lit_transfer defaults + TransferClassifier on a feature-cache entry": lit_transfer_cached,
            f"lit_transfer defaults + TransferClassifier on a feature-cache entry, fused_steps {FUSED_STEPS}": (
                lit_transfer_fused
            ),
        },
        rounds=3 if quick else 5,
    )
    rows = ratio_rows("1 step overhead (steps/s)", rates, "plain loop", _cmd("step", quick))
    fused = f"lit_transfer defaults + TransferClassifier on a feature-cache entry, fused_steps {FUSED_STEPS}"
    fused += " / plain loop"
    return with_goal(rows, fused, ">= 0.9")  # issue 17 goal (c)


# --- 2. real-model parity and 4. frozen mode -------------------------------------------------------------------------


def image_loader(n_batches: int, batch: int, size: int) -> DataLoader:
    """Random uint8 images with labels, in memory."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_batches * batch, 3, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n_batches * batch,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False, num_workers=0)


def bench_resnet(quick: bool, batch: int = 16, size: int = 64) -> list[dict[str, Any]]:
    """Sections 2 and 4: ResNet18 (weights=None) img/s: Lightning vs plain loop, and frozen vs fine-tuned."""
    warmup, steps = 3, (8 if quick else 20)
    total = warmup + steps
    loader = image_loader(total, batch, size)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1)

    def plain() -> float:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        t0 = 0.0
        for i, (x, y) in enumerate(loader):
            if i == warmup:
                t0 = time.perf_counter()
            logits = model((x.float().div_(255) - mean) / std)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * batch / (time.perf_counter() - t0)

    def lightning(freeze: str) -> Callable[[], float]:
        def run() -> float:
            torch.manual_seed(0)
            model = TransferClassifier(NUM_CLASSES, backbone="resnet18", weights=None, freeze=freeze)
            timer = StepTimer(warmup, steps)
            return fit_rate(bare_trainer(total, [timer]), model, loader, timer) * batch

        return run

    rounds = 3 if quick else 5
    parity = interleaved(
        {"plain loop": plain, "Lightning + TransferClassifier": lightning("none")},
        rounds=rounds,
    )
    frozen = interleaved(
        {"fine-tune (freeze=none)": lightning("none"), "frozen (freeze=backbone)": lightning("backbone")},
        rounds=rounds,
    )
    return ratio_rows(
        f"2 ResNet18 parity (img/s, b{batch} {size}px)", parity, "plain loop", _cmd("resnet", quick)
    ) + ratio_rows(
        f"4 frozen mode (img/s, b{batch} {size}px)", frozen, "fine-tune (freeze=none)", _cmd("resnet", quick)
    )


# --- 3. input pipeline -----------------------------------------------------------------------------------------------


def make_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """JPEGs of smooth random noise (upscaled low-resolution noise, quality 90)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8), "RGB")
        path = folder / f"img_{width}x{height}_{i:03d}.jpg"
        small.resize((width, height), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


SEED_STYLE = "seed-style (PIL RRC+flip+ToTensor+Normalize)"
DECODE_ONLY = "decode only (PIL open+convert RGB)"
OURS = "ours: ImageFilesDataset[i], decode_scale 2.0"
FULL = "ImageFilesDataset[i], decode_scale null (full decode)"


def bench_pipeline(quick: bool) -> list[dict[str, Any]]:
    """Section 3: train-item img/s per core ÷ decode-only and ÷ a seed-style torchvision pipeline.

    "ours" is the training item as the data modules build it by default (``make_dataset`` with ``decode_scale=2.0``:
    JPEGs decoded at a reduced DCT scale whose shorter side stays >= 448 at image size 224); the same item with
    ``decode_scale=None`` (full decode) is kept for comparison.
    """
    from torchvision import transforms as T

    tmp = Path(temp_dir("lt_bench_jpeg_"))
    seed_style = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ours_module = BaseImageDataModule(image_size=224)  # only its make_dataset: nothing is scanned
    full_module = BaseImageDataModule(image_size=224, decode_scale=None)
    min_side = ours_module.decode_min_side(224)
    rows: list[dict[str, Any]] = []
    cmd = _cmd("pipeline", quick)
    # each round decodes every file `passes` times, so one variant's round lasts ~0.5 s even on big files
    for width, height, count, passes in ((500, 375, 64, 2), (3000, 2000, 6, 3 if quick else 6)):
        paths = make_jpegs(tmp, count, width, height) * passes
        names, targets = [p.name for p in paths], list(range(len(paths)))
        ours = ours_module.make_dataset(tmp, names, targets, "train")
        full = full_module.make_dataset(tmp, names, targets, "train")

        def rate(fn: Callable[[Path, int], Any], paths: list[Path] = paths) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                for i, p in enumerate(paths):
                    fn(p, i)
                return len(paths) / (time.perf_counter() - t0)

            return run

        def decode(p: Path, i: int) -> Any:
            with Image.open(p) as img:
                return img.convert("RGB")

        rates = interleaved(
            {
                DECODE_ONLY: rate(decode),
                "load_rgb(p) only (full decode)": rate(lambda p, i: load_rgb(p)),
                f"load_rgb(p, {min_side}) only": rate(lambda p, i: load_rgb(p, min_side)),
                OURS: rate(lambda p, i, d=ours: d[(i, 0)]),
                FULL: rate(lambda p, i, d=full: d[(i, 0)]),
                SEED_STYLE: rate(lambda p, i: seed_style(decode(p, i))),
            },
            rounds=5 if quick else 9,
        )
        section = f"3 input pipeline {width}x{height} (img/s, 1 core)"
        rows += ratio_rows(section, rates, DECODE_ONLY, cmd)
        seed_rows = ratio_rows(section, {k: rates[k] for k in (OURS, FULL, SEED_STYLE)}, SEED_STYLE, cmd)
        rows += with_goal(seed_rows, f"{OURS} / {SEED_STYLE}", ">= 1.1" if width <= 500 else ">= 2")
        rows += ratio_rows(section, {k: rates[k] for k in (OURS, FULL)}, FULL, cmd)
    return rows


def _loop_section(name: str, module: str = "bench_loop") -> Callable[[bool], list[dict[str, Any]]]:
    """A section defined in another file, imported when it runs (those files import this module's helpers)."""

    def section(quick: bool) -> list[dict[str, Any]]:
        import importlib

        return getattr(importlib.import_module(module), name)(quick)

    section.__doc__ = f"{module}.{name}"
    return section


# --- driver ----------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {
    "step": bench_step_overhead,
    "resnet": bench_resnet,
    "pipeline": bench_pipeline,
    "loader": _loop_section("bench_loader"),
    "transition": _loop_section("bench_transition"),
    "scaling": _loop_section("bench_scaling"),
    "cache": _loop_section("bench_feature_cache", "bench_cache"),
    "small_fit": _loop_section("bench_small_fit", "bench_small"),
    "small_process": _loop_section("bench_small_process", "bench_small"),
}


def _cmd(section: str, quick: bool) -> str:
    return f"python benchmarks/run.py{' --quick' if quick else ''} --only {section}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """The figures as a fixed-width table; rows with a goal show it and whether it is met."""
    print(f"{'section':<46} {'row':<92} {'ratio':>7} {'rate':>10} {'base':>10}  goal")
    for r in rows:
        goal = f"{r['goal']} {'met' if r['goal_met'] else 'NOT met'}" if "goal" in r else ""
        if "folder_scans_per_fit" in r:
            goal += f" (folder scans per fit: {r['folder_scans_per_fit']})"
        if "other_cores" in r:  # a shared machine: cores other processes kept busy, per round
            goal += f" (other processes: {r['other_cores']} cores)"
        print(
            f"{r['section']:<46} {r['row']:<92} {r['ratio']:>7.3f} {r['rate']:>10.4g} {r['base_rate']:>10.4g}  {goal}"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run the chosen sections, print the table and write results.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (~11 min on 2 idle cores)")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every variant")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.only:
        t0 = time.perf_counter()
        rows += SECTIONS[name](args.quick)
        print(f"[{name}] {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print_table(rows)
    meta = {
        "quick": args.quick,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "cuda_available": torch.cuda.is_available(),
        "wall_s": round(time.perf_counter() - start, 1),
        "note": "ratios are medians of per-round ratios; variants interleaved, first round discarded",
    }
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output} in {meta['wall_s']}s", file=sys.stderr)


if __name__ == "__main__":
    main()
