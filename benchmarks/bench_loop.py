"""Benchmarks of the loop around the data: DataLoader scaling (issue row 3), epoch transitions (6), data scaling (7).

Run through the driver: ``python benchmarks/run.py [--quick] --only loader transition scaling``. Same protocol as
every other section (see ``run.py``): variants interleaved, round 0 discarded, the figure is the median of the
per-round ratios. Everything reads real JPEG class trees through ``ImageFolderDataModule``.

These variants use both cores, so another process on a shared machine lowers their figures directly: each variant
starts once other processes are quiet and is measured again if one got busy meanwhile (within a time budget, see
:func:`watch_load`), and every row records ``other_cores``, the other processes' load per round.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from run import _cmd, interleaved, lit_transfer_trainer, make_jpegs, ratio_rows, temp_dir, with_goal
from torch.utils.data import DataLoader, default_collate

from lit_transfer.data.base import BadSample, Batch, collate_skipping_bad
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.models import TransferClassifier


def make_image_tree(root: Path, classes: int, per_class: int, width: int, height: int) -> Path:
    """``root/class_NN/img_*.jpg``: ``per_class`` photo-like JPEGs (smooth noise, quality 90) in each class."""
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        make_jpegs(folder, per_class, width, height)
    return root


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now rather than whenever the loader is garbage-collected."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def quiet_fit(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """``trainer.fit`` with the progress bar's and Lightning's console output swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, datamodule=datamodule)


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``), or NaN where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have exited (loader workers once shut down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


QUIET_CORES = 0.3  # other processes' load (in cores) below which a measurement counts as undisturbed
QUIET_BUDGET_S = [120.0]  # seconds this process may still spend waiting for quiet or re-measuring, in all


def _foreign_load(busy: float, own: float, t0: float) -> float:
    """Cores that other processes kept busy since the readings ``busy``, ``own`` taken at ``t0``."""
    foreign = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own)
    return max(0.0, foreign) / max(time.perf_counter() - t0, 1e-9)


def wait_for_quiet(window: float = 0.2) -> None:
    """Wait until other processes use fewer than ``QUIET_CORES`` cores over ``window`` seconds (within the budget)."""
    while QUIET_BUDGET_S[0] > 0:
        readings = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        time.sleep(window)
        if not _foreign_load(*readings) >= QUIET_CORES:  # also stops on NaN (no /proc/stat)
            return
        QUIET_BUDGET_S[0] -= window


def watch_load(variants: dict[str, Callable[[], float]]) -> tuple[dict[str, Callable[[], float]], list[float]]:
    """Wrap variants to run on a quiet machine, and record the cores other processes kept busy meanwhile.

    The machine may be shared and these variants use both cores, so another process's load lowers their figures
    directly. Each call waits for a quiet moment and is measured again (up to twice) when another process got busy
    during it, while ``QUIET_BUDGET_S`` lasts; then it is measured as it comes. Returns the wrapped variants and the
    list of other processes' loads, one per call (its last attempt), in call order.
    """
    loads: list[float] = []

    def wrap(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            for attempt in range(3):
                wait_for_quiet()
                readings = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
                value = fn()
                load = _foreign_load(*readings)
                if not load >= QUIET_CORES or attempt == 2 or QUIET_BUDGET_S[0] <= 0:
                    break
                QUIET_BUDGET_S[0] -= time.perf_counter() - readings[2]
            loads.append(load)
            return value

        return run

    return {k: wrap(fn) for k, fn in variants.items()}, loads


def note_load(rows: list[dict[str, Any]], loads: list[float], per_round: int) -> list[dict[str, Any]]:
    """Add ``other_cores``: per timed round, the most cores other processes used during one of its variants."""
    rounds = [max(loads[i : i + per_round]) for i in range(per_round, len(loads), per_round)]
    for r in rows:
        r["other_cores"] = [round(x, 2) for x in rounds]
    return rows


# --- 3. DataLoader scaling -------------------------------------------------------------------------------------------


def collate_into_shared_memory(items: list[Any]) -> Batch:
    """``collate_skipping_bad`` with the images stacked by ``default_collate``: in a worker straight into shared memory.

    ``torch.stack`` fills private memory, which the worker then copies into shared memory to send the batch.
    """
    good = [item for item in items if not isinstance(item, BadSample)]
    if not good:
        return collate_skipping_bad(items)
    return Batch(
        default_collate([g[0] for g in good]),
        torch.tensor([g[1] for g in good], dtype=torch.long),
        torch.tensor([g[2] for g in good], dtype=torch.long),
        [item for item in items if isinstance(item, BadSample)],
    )


def loader_rate(
    root: Path,
    workers: int,
    batch: int,
    epochs: int,
    prefetch: int | None = None,
    collate: Callable[[list[Any]], Batch] | None = None,
) -> Callable[[], float]:
    """img/s of the data module's train loader over whole epochs, after one untimed epoch (worker start-up).

    ``prefetch`` or ``collate`` rebuild the loader from the benchmark side with that ``prefetch_factor`` or
    ``collate_fn`` (everything else as ``BaseImageDataModule._loader`` sets it); without them the module's own
    ``train_dataloader()`` is iterated.
    """

    def run() -> float:
        dm = ImageFolderDataModule(
            root=str(root), val_fraction=0.0, image_size=224, batch_size=batch, num_workers=workers
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        if prefetch is not None or collate is not None:
            loader = DataLoader(
                loader.dataset,
                batch_size=batch,
                sampler=loader.sampler,
                num_workers=workers,
                collate_fn=collate or collate_skipping_bad,
                persistent_workers=True,
                prefetch_factor=prefetch or 2,
                generator=torch.Generator().manual_seed(dm.seed),
            )
        images, t0 = 0, 0.0
        for epoch in range(epochs + 1):
            if epoch == 1:
                t0 = time.perf_counter()
            loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
            for b in loader:
                images += len(b.images) if epoch > 0 else 0
        rate = images / (time.perf_counter() - t0)
        shutdown_workers(loader)
        return rate

    return run


def _items_in_process(dataset: Any, indices: list[int], epochs: int, barrier: Any, times: Any, slot: int) -> None:
    """Child of :func:`parallel_ceiling`: one warm-up item, wait for the sibling, then time its share of the items."""
    torch.set_num_threads(1)  # as DataLoader workers do
    dataset[(indices[0], 0)]
    barrier.wait()
    t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for epoch in range(1, epochs + 1):
        for i in indices:
            dataset[(i, epoch)]
    times[2 * slot], times[2 * slot + 1] = t0, time.perf_counter()


def parallel_ceiling(root: Path, epochs: int) -> Callable[[], float]:
    """img/s of two independent forked processes each computing half of the same training items, no DataLoader.

    What the machine allows two processes at most (shared caches, memory bandwidth, clock, a virtual machine's
    cores); start-up is excluded by a barrier, the wall time runs from the first start to the last end.
    """

    def run() -> float:
        dm = ImageFolderDataModule(root=str(root), val_fraction=0.0, image_size=224, num_workers=0)
        dm.setup("fit")
        dataset = dm.train_dataloader().dataset
        ctx = mp.get_context("fork")
        barrier, times = ctx.Barrier(2), ctx.Array("d", 4)
        halves = [list(range(len(dataset)))[k::2] for k in range(2)]
        procs = [
            ctx.Process(target=_items_in_process, args=(dataset, halves[k], epochs, barrier, times, k))
            for k in range(2)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        return epochs * len(dataset) / (max(times[1], times[3]) - min(times[0], times[2]))

    return run


def bench_loader(quick: bool) -> list[dict[str, Any]]:
    """Section 3 (DataLoader scaling): train-loader img/s with 2 persistent workers ÷ (2 × the same in-process).

    256 JPEGs of 500x375 in 4 class folders, image size 224 (decode_scale 2.0, standard augmentation), batch 32 unless
    the row says otherwise; 1 untimed + 2 timed epochs (4 timed in the full run) per measurement.
    """
    root = make_image_tree(Path(temp_dir("lt_bench_loader_")), 4, 64, 500, 375)
    epochs = 2 if quick else 4
    base = "1 process (num_workers=0), b32"
    ours = "ours: train_dataloader(), 2 persistent workers, b32 (prefetch_factor 2)"
    one = "1 worker, b32 (prefetch_factor 2)"
    ceiling = "machine ceiling: 2 independent processes, no DataLoader"
    shm = "2 workers, b32, images collated into shared memory (default_collate)"
    variants, loads = watch_load(
        {
            base: loader_rate(root, 0, 32, epochs),
            ours: loader_rate(root, 2, 32, epochs),
            ceiling: parallel_ceiling(root, epochs),
            "2 workers, b32, prefetch_factor 4": loader_rate(root, 2, 32, epochs, prefetch=4),
            "2 workers, b16 (prefetch_factor 2)": loader_rate(root, 2, 16, epochs),
            "2 workers, b64 (prefetch_factor 2)": loader_rate(root, 2, 64, epochs),
            shm: loader_rate(root, 2, 32, epochs, collate=collate_into_shared_memory),
            one: loader_rate(root, 1, 32, epochs),
        }
    )
    rates = interleaved(variants, rounds=3 if quick else 5)
    section, cmd = "3 DataLoader scaling (img/s, 2 cores)", _cmd("loader", quick)
    doubled = {"2 × " + base: [2 * v for v in rates[base]], **{k: v for k, v in rates.items() if k not in (base, one)}}
    rows = with_goal(ratio_rows(section, doubled, "2 × " + base, cmd), f"{ours} / 2 × {base}", ">= 0.75")
    rows += ratio_rows(section, {ceiling: rates[ceiling], ours: rates[ours]}, ceiling, cmd)  # the loader's own loss
    rows += ratio_rows(section, {ours: rates[ours], shm: rates[shm]}, ours, cmd)
    rows += ratio_rows(section, {base: rates[base], one: rates[one]}, base, cmd)  # the cost of the worker hand-off
    return note_load(rows, loads, len(variants))


# --- 6. epoch transition ---------------------------------------------------------------------------------------------


class BatchClock(Callback):
    """Records when each training batch starts (first callback) and ends (``clock.end``, the last callback)."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}  # epoch -> start of its first training batch
        self.ends: dict[int, float] = {}  # epoch -> end of its last training batch (overwritten every batch)
        self.epoch_starts: list[float] = []
        self.fit_end = 0.0
        self.end = _BatchEnd(self)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start of an epoch (before its first batch is fetched)."""
        self.epoch_starts.append(time.perf_counter())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """The first batch of an epoch has been fetched and is about to run."""
        if idx == 0:
            self.starts[trainer.current_epoch] = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the last epoch, its end-of-epoch work included."""
        self.fit_end = time.perf_counter()

    def gaps(self, skip: int = 1) -> list[float]:
        """Seconds from the end of epoch e's last batch to the start of epoch e+1's first, for e >= ``skip``."""
        return [self.starts[e + 1] - self.ends[e] for e in sorted(self.ends) if e >= skip and e + 1 in self.starts]


class _BatchEnd(Callback):
    def __init__(self, clock: BatchClock) -> None:
        self.clock = clock

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.clock.ends[trainer.current_epoch] = time.perf_counter()


def transition_data(root: Path, image_size: int, batch: int) -> ImageFolderDataModule:
    """The data module of the transition rows: ``root/train`` and ``root/val`` trees, 2 persistent workers."""
    return ImageFolderDataModule(
        train_dir=str(root / "train"),
        val_dir=str(root / "val"),
        image_size=image_size,
        batch_size=batch,
        num_workers=2,
        persistent_workers=True,
    )


def plain_gaps(root: Path, image_size: int, batch: int, epochs: int, validate: bool) -> float:
    """Median epoch-transition gap of a hand-written loop: same datasets and model, torch DataLoaders."""
    dm = transition_data(root, image_size, batch)
    dm.setup("fit")
    train_set, val_set = dm.train_dataloader().dataset, dm.val_dataloader().dataset
    torch.manual_seed(0)
    model = TransferClassifier(dm.num_classes, backbone="smallcnn")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train = DataLoader(train_set, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True)
    val = DataLoader(val_set, batch_size=batch, num_workers=2, persistent_workers=True)
    starts, ends = [], []
    for _ in range(epochs):
        model.train()
        for i, (x, y, _idx) in enumerate(train):
            if i == 0:
                starts.append(time.perf_counter())
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ends.append(time.perf_counter())
        if validate:
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y, _idx in val:
                    correct += int((model(x).argmax(1) == y).sum())
    shutdown_workers(train)
    shutdown_workers(val)
    return statistics.median(starts[e + 1] - ends[e] for e in range(1, epochs - 1))


def lightning_gaps(root: Path, image_size: int, batch: int, epochs: int, validate: bool, defaults: bool) -> float:
    """Median epoch-transition gap of ``Trainer.fit`` on the data module (lit_transfer defaults, or bare)."""
    dm = transition_data(root, image_size, batch)
    torch.manual_seed(0)
    model = TransferClassifier(dm.num_classes, backbone="smallcnn")
    clock = BatchClock()
    limit_val = None if validate else 0
    if defaults:
        monitor = "val_acc" if validate else "train_loss"
        run_dir = temp_dir("lt_bench_transition_")
        trainer = lit_transfer_trainer(
            None, clock, run_dir, monitor=monitor, last=[clock.end], max_epochs=epochs, limit_val_batches=limit_val
        )
    else:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            limit_val_batches=limit_val,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[clock, clock.end],
        )
    quiet_fit(trainer, model, dm)
    return statistics.median(clock.gaps())


def bench_transition(quick: bool) -> list[dict[str, Any]]:
    """Section 6: wall time from the last training batch of an epoch to the first of the next, ours ÷ plain loop.

    ``smallcnn`` at 32 px, batch 16; 64 training JPEGs (4 batches) and 16 validation JPEGs (160x120) in 4 classes;
    2 persistent workers per loader. The median over the transitions after epoch 1 (epoch 0 → 1 starts workers).
    """
    root = Path(temp_dir("lt_bench_transition_data_"))
    make_image_tree(root / "train", 4, 16, 160, 120)
    make_image_tree(root / "val", 4, 4, 160, 120)
    size, batch, epochs = 32, 16, (5 if quick else 8)
    rows: list[dict[str, Any]] = []
    plain = "plain loop (persistent workers)"
    ours = "ours: lit_transfer defaults + TransferClassifier"
    for validate in (False, True):
        variants, loads = watch_load(
            {
                plain: lambda v=validate: plain_gaps(root, size, batch, epochs, v),
                "Lightning bare + TransferClassifier": lambda v=validate: lightning_gaps(
                    root, size, batch, epochs, v, defaults=False
                ),
                ours: lambda v=validate: lightning_gaps(root, size, batch, epochs, v, defaults=True),
            }
        )
        gaps = interleaved(variants, rounds=3 if quick else 5)
        section = f"6 epoch transition, {'with' if validate else 'no'} validation (gap s)"
        found = with_goal(ratio_rows(section, gaps, plain, _cmd("transition", quick)), f"{ours} / {plain}", "<= 1.1")
        rows += note_load(found, loads, len(variants))
    return rows


# --- 7. scaling ------------------------------------------------------------------------------------------------------


class CountingDataModule(ImageFolderDataModule):
    """``ImageFolderDataModule`` that counts its folder scans (``build_samples`` calls)."""

    scans = 0

    def build_samples(self) -> Any:
        """Scan as usual, and count it."""
        CountingDataModule.scans += 1
        return super().build_samples()


def epoch_seconds(root: Path, image_size: int, batch: int, epochs: int) -> tuple[float, int]:
    """Median seconds per epoch over epochs 1.. of a lit_transfer-default fit, and how often it scanned the folder.

    An epoch runs from its ``on_train_epoch_start`` to the next one's (the last to ``on_train_end``), so the
    transition and end-of-epoch work (checkpoint, metrics, reports) are included.
    """
    dm = CountingDataModule(root=str(root), val_fraction=0.0, image_size=image_size, batch_size=batch, num_workers=2)
    torch.manual_seed(0)
    model = TransferClassifier(dm.num_classes, backbone="smallcnn")
    clock = BatchClock()
    run_dir = temp_dir("lt_bench_scaling_")
    trainer = lit_transfer_trainer(None, clock, run_dir, last=[clock.end], max_epochs=epochs, limit_val_batches=0)
    before = CountingDataModule.scans
    quiet_fit(trainer, model, dm)
    bounds = [*clock.epoch_starts, clock.fit_end]
    return statistics.median(bounds[e + 1] - bounds[e] for e in range(1, epochs)), CountingDataModule.scans - before


def bench_scaling(quick: bool) -> list[dict[str, Any]]:
    """Section 7: seconds per image per epoch at 4x and 16x the data ÷ at 1x, at 32 and 64 px (1.0 = linear cost).

    1x is 32 training JPEGs (160x120, 2 classes), batch 16, lit_transfer's default Trainer, 2 persistent workers,
    no validation; 3 epochs (5 in the full run), epoch 0 untimed. Also checks the folder is scanned once per fit.
    """
    base_count, batch, epochs = 32, 16, (3 if quick else 5)
    scales = (1, 4, 16)
    roots = {}
    for k in scales:
        roots[k] = make_image_tree(Path(temp_dir(f"lt_bench_scaling_{k}x_")), 2, base_count * k // 2, 160, 120)
    rows: list[dict[str, Any]] = []
    scans: list[int] = []

    def variant(k: int, size: int) -> Callable[[], float]:
        def run() -> float:
            seconds, n_scans = epoch_seconds(roots[k], size, batch, epochs)
            scans.append(n_scans)
            return seconds / (base_count * k)

        return run

    for size in (32, 64):
        variants, loads = watch_load({f"{k}x": variant(k, size) for k in scales})
        per_image = interleaved(variants, rounds=2 if quick else 4)
        section = f"7 scaling {size}px (epoch s/img, 1x = {base_count} img)"
        found = ratio_rows(section, per_image, "1x", _cmd("scaling", quick))
        for k in scales[1:]:
            with_goal(found, f"{k}x / 1x", "<= 1.1")  # no superlinear growth; below 1: fixed per-epoch costs
        rows += note_load(found, loads, len(variants))
    for r in rows:
        r["folder_scans_per_fit"] = sorted(set(scans))
    return rows
