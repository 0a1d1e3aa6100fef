"""Speed on small data (issue 17): a fit of short epochs (``small_fit``) and a whole process (``small_process``).

Run through the driver: ``python benchmarks/run.py [--quick] --only small_fit small_process``. Same protocol as every
other section (see ``run.py``): variants interleaved with the order reversed every other round, round 0 discarded,
the figure is the median of the per-round ratios; each row keeps its per-round values.

Data: scikit-learn's 1,797 real digit scans as an image folder (``lit_transfer.demo.build_digits``, 32 px PNGs),
split 60/20/20 by ``ImageFolderDataModule`` (1,109 training images: 18 batches of 64). ResNet18 from scratch
(``weights: null``), Adam (lr 1e-3) on both sides, 2 loader workers, validation every epoch, the ``standard``
augmentation (RandomResizedCrop + flip). Both sides run with the driver's ``--threads`` (in process:
``torch.set_num_threads``; subprocesses: ``OMP_NUM_THREADS``). lit_transfer's rich progress bar draws as it would in
a terminal (``TTY_COMPATIBLE=1``, ``TTY_INTERACTIVE=1``; the output goes nowhere), so its cost is counted.

The plain side is one script (``PLAIN_SCRIPT``), written into a temporary file: ``small_fit`` imports it and calls
its ``fit`` on the same split files as lit_transfer's; ``small_process`` runs it as ``python plain_fit.py``, where
it builds the split itself, by lit_transfer's rule (a keyed hash of each relative path), so both train on the same
files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import torch
from bench_loop import note_load, watch_load
from lightning.pytorch.callbacks import Callback
from run import ROOT, _cmd, interleaved, ratio_rows, temp_dir, with_goal

EPOCHS = 4  # epoch 1 starts the loader workers; epochs 2-4 are timed
TIMED_FROM = 1  # 0-based index of the first timed epoch
IMAGE_SIZE, BATCH, WORKERS, LR, SEED = 32, 64, 2, 1e-3, 42

PLAIN_SCRIPT = '''\
"""A plain PyTorch fit: ResNet18 from scratch on an image folder, validated every epoch, the best weights kept.

python plain_fit.py ROOT EPOCHS OUT.pt  (torch's thread count from OMP_NUM_THREADS)
"""

import hashlib
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import default_loader
from torchvision.transforms import InterpolationMode, v2

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Files(Dataset):
    """(path, label) pairs read as ImageFolder does (PIL, RGB), then transformed to uint8 CHW."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(default_loader(path)), label


def split(root, val=0.2, test=0.2, seed=42):
    """ImageFolder(root) split by a keyed hash of each relative path (lit_transfer's rule): (train, val, classes)."""
    folder = torchvision.datasets.ImageFolder(root)
    train, valid = [], []
    for path, label in folder.samples:
        key = f"{seed}:{os.path.relpath(path, root)}".encode()
        u = (int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 11) / 2**53
        if u < 1 - val - test:
            train.append((path, label))
        elif u < 1 - test:
            valid.append((path, label))
    return train, valid, len(folder.classes)


def fit(train, val, classes, epochs, out=None, size=32, batch=64, workers=2, lr=1e-3, on_epoch=None):
    """Train and validate every epoch; save the best state dict to ``out`` (atomically). Returns the best accuracy.

    ``on_epoch(epoch, images, seconds)`` gets each epoch's training images and its time from the epoch's start to
    the end of its last training batch.
    """
    torch.manual_seed(42)
    train_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    eval_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(round(size / 0.875), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(size),
        ]
    )
    persistent = workers > 0
    train_loader = DataLoader(
        Files(train, train_tf), batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=persistent
    )
    val_loader = DataLoader(Files(val, eval_tf), batch_size=batch, num_workers=workers, persistent_workers=persistent)
    model = torchvision.models.resnet18(num_classes=classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = -1.0
    for epoch in range(epochs):
        model.train()
        t0, images = time.perf_counter(), 0
        for x, y in train_loader:
            loss = F.cross_entropy(model((x.float().div_(255) - MEAN) / STD), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        if on_epoch is not None:
            on_epoch(epoch, images, time.perf_counter() - t0)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model((x.float().div_(255) - MEAN) / STD).argmax(1) == y).sum())
        accuracy = correct / len(val)
        if out is not None and accuracy > best:
            best = accuracy
            torch.save(model.state_dict(), out + ".tmp")
            os.replace(out + ".tmp", out)
        best = max(best, accuracy)
    for loader in (train_loader, val_loader):  # stop the persistent workers now
        if getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()
    return best


if __name__ == "__main__":
    train, val, classes = split(sys.argv[1])
    print(f"best val accuracy {fit(train, val, classes, int(sys.argv[2]), sys.argv[3]):.3f}")
'''

_STATE: dict[str, Any] = {}


def digits_root() -> Path:
    """The digit scans as ``<tmp>/digits/<digit>/<n>.png`` (written once per process)."""
    if "digits" not in _STATE:
        from lit_transfer.demo import build_digits

        root = Path(temp_dir("lt_bench_small_")) / "digits"
        build_digits(root, size=IMAGE_SIZE)
        _STATE["digits"] = root
    return Path(_STATE["digits"])


def plain_script() -> Path:
    """``PLAIN_SCRIPT`` written to a temporary ``plain_fit.py`` (once per process)."""
    if "script" not in _STATE:
        path = Path(temp_dir("lt_bench_small_script_")) / "plain_fit.py"
        path.write_text(PLAIN_SCRIPT)
        _STATE["script"] = path
    return Path(_STATE["script"])


def plain_module() -> ModuleType:
    """``PLAIN_SCRIPT`` imported as a module (its ``fit`` and ``Files``)."""
    if "module" not in _STATE:
        spec = importlib.util.spec_from_file_location("plain_fit", plain_script())
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["plain_fit"] = module  # so loader workers (forked) and pickling find it
        spec.loader.exec_module(module)
        _STATE["module"] = module
    return _STATE["module"]  # type: ignore[no-any-return]


def data_init_args(root: Path) -> dict[str, Any]:
    """The data module's settings on both benchmarks."""
    return {
        "root": str(root),
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "num_workers": WORKERS,
    }


def cli_args(root: Path, runs_dir: str, epochs: int, *extra: str) -> list[str]:
    """``LitTransferCLI`` arguments of the small fit; everything not named stays at lit_transfer's defaults."""
    args = ["--data", "ImageFolderDataModule"]
    for key, value in data_init_args(root).items():
        args += [f"--data.{key}", str(value)]
    return [
        *args,
        "--model", "TransferClassifier",
        "--model.backbone", "resnet18",
        "--model.weights", "null",
        "--optimizer", "torch.optim.Adam",
        "--optimizer.lr", str(LR),
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--runs_dir", runs_dir,
        "--experiment", "small",
        *extra,
    ]  # fmt: skip


def fit_config(root: Path, runs_dir: str, epochs: int) -> dict[str, Any]:
    """The config file of ``small_process``'s ``python -m lit_transfer fit --config``: the same as :func:`cli_args`."""
    return {
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
        "model": {
            "class_path": "lit_transfer.models.TransferClassifier",
            "init_args": {"backbone": "resnet18", "weights": None},
        },
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": LR}},
        "data": {"class_path": "lit_transfer.data.ImageFolderDataModule", "init_args": data_init_args(root)},
        "runs_dir": runs_dir,
        "experiment": "small",
    }


TERMINAL_ENV = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}


@contextlib.contextmanager
def as_in_a_terminal() -> Iterator[None]:
    """Rich draws as on a terminal (Live refreshes included) while the output is swallowed."""
    saved = {k: os.environ.get(k) for k in TERMINAL_ENV}
    os.environ.update(TERMINAL_ENV)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class EpochClock(Callback):
    """Per epoch: when it starts, its training batches end, its validation starts and ends; and its images.

    Put it first among the callbacks and ``clock.end`` last, so a batch's and an epoch's own hooks are inside the
    training span; the validation span is the loop alone (its end hooks, checkpoints included, fall between epochs).
    """

    def __init__(self) -> None:
        self.train_start: dict[int, float] = {}
        self.train_end: dict[int, float] = {}
        self.val_start: dict[int, float] = {}
        self.val_end: dict[int, float] = {}
        self.images: dict[int, int] = {}
        self.fit_end = 0.0
        self.end = _LastBatchEnd(self)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch starts (its loader iterator is not yet asked for a batch)."""
        self.train_start[trainer.current_epoch] = time.perf_counter()
        self.images[trainer.current_epoch] = 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation of this epoch starts (the sanity check is not counted)."""
        if not trainer.sanity_checking:
            self.val_start[trainer.current_epoch] = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation's loop has ended (before the other callbacks' end hooks)."""
        if not trainer.sanity_checking:
            self.val_end[trainer.current_epoch] = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The last epoch's end-of-epoch work is done."""
        self.fit_end = time.perf_counter()

    def rate(self, first: int = TIMED_FROM) -> float:
        """Training images/s over epochs ``first``.. (epoch start to the end of its last training batch)."""
        epochs = [e for e in sorted(self.train_end) if e >= first]
        seconds = sum(self.train_end[e] - self.train_start[e] for e in epochs)
        return sum(self.images[e] for e in epochs) / seconds

    def split(self) -> list[dict[str, float]]:
        """Seconds per epoch: ``train`` (batches), ``val`` (the loop) and ``other`` (the rest up to the next epoch)."""
        rows = []
        for e in sorted(self.train_end):
            following = self.train_start.get(e + 1, self.fit_end)
            train = self.train_end[e] - self.train_start[e]
            val = self.val_end.get(e, 0.0) - self.val_start.get(e, 0.0)
            other = following - self.train_start[e] - train - val
            rows.append({"epoch": e, "train": train, "val": val, "other": other})
        return rows


class _LastBatchEnd(Callback):
    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.clock.train_end[trainer.current_epoch] = time.perf_counter()
        self.clock.images[trainer.current_epoch] += len(batch[0])


def ours_fit(root: Path, extra: Sequence[str] = (), epochs: int = EPOCHS) -> EpochClock:
    """The CLI's default fit (``LitTransferCLI(run=False)`` + ``trainer.fit``) with an :class:`EpochClock` added."""
    from lit_transfer.cli.app import LitTransferCLI

    runs_dir = tempfile.mkdtemp(prefix="lt_bench_small_runs_")
    clock = EpochClock()
    cwd = os.getcwd()
    try:
        os.chdir(runs_dir)  # without a logger, checkpoints and config.yaml go to the working directory
        with as_in_a_terminal():
            cli = LitTransferCLI(args=cli_args(root, runs_dir, epochs, *extra), run=False)
            cli.trainer.callbacks.insert(0, clock)
            cli.trainer.callbacks.append(clock.end)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        os.chdir(cwd)
        shutil.rmtree(runs_dir, ignore_errors=True)
    return clock


def lit_transfer_splits(root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """The train and val files (absolute path, label) of lit_transfer's split of ``root``, and the class count."""
    if "splits" not in _STATE:
        from lit_transfer.data.folder import ImageFolderDataModule

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            dm = ImageFolderDataModule(**data_init_args(root))
            dm.setup("fit")
        files = {
            split: [(str(dm.data_root / s.path), s.label) for s in dm.samples if s.split == split]
            for split in ("train", "val")
        }
        _STATE["splits"] = files["train"], files["val"], dm.num_classes
    return _STATE["splits"]  # type: ignore[no-any-return]


def plain_rate(root: Path, epochs: int = EPOCHS) -> float:
    """The plain script's ``fit`` in this process on lit_transfer's split: training images/s over epochs 2..."""
    train, val, classes = lit_transfer_splits(root)
    timed: list[tuple[int, float]] = []

    def on_epoch(epoch: int, images: int, seconds: float) -> None:
        if epoch >= TIMED_FROM:
            timed.append((images, seconds))

    plain_module().fit(train, val, classes, epochs, None, IMAGE_SIZE, BATCH, WORKERS, LR, on_epoch)
    return sum(i for i, _ in timed) / sum(s for _, s in timed)


QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
NO_BAR = ["--trainer.enable_progress_bar", "false"]


def bench_small_fit(quick: bool) -> list[dict[str, Any]]:
    """Section ``small_fit`` (issue 17 goal a): training images/s over epochs 2-4, lit_transfer's fit ÷ plain loop."""
    root = digits_root()
    lit_transfer_splits(root)
    plain = "plain loop (ImageFolder-style, Adam, accuracy only)"
    ours = "ours: lit_transfer defaults (CLI), Adam"
    quiet = "ours with --trainer.logger false --trainer.enable_progress_bar false"
    no_bar = "ours with --trainer.enable_progress_bar false"
    found: dict[str, Callable[[], float]] = {
        plain: lambda: plain_rate(root),
        ours: lambda: ours_fit(root).rate(),
        quiet: lambda: ours_fit(root, QUIET).rate(),
    }
    if not quick:
        found[no_bar] = lambda: ours_fit(root, NO_BAR).rate()
    variants, loads = watch_load(found)
    rates = interleaved(variants, rounds=3 if quick else 5)  # a median of 3 outlasts one disturbed round
    section = f"8 small fit (train img/s, {len(lit_transfer_splits(root)[0])} img, 32px, b{BATCH})"
    rows = with_goal(ratio_rows(section, rates, plain, _cmd("small_fit", quick)), f"{ours} / {plain}", ">= 0.95")
    rows += ratio_rows(section, {k: rates[k] for k in rates if k != plain}, ours, _cmd("small_fit", quick))
    return note_load(with_values(rows, rates), loads, len(variants))


def with_values(rows: list[dict[str, Any]], values: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Add every row's per-round values (``values``) and its base's (``base_values``)."""
    for r in rows:
        name, base = r["row"].split(" / ", 1)
        r["values"] = [round(v, 4) for v in values[name]]
        r["base_values"] = [round(v, 4) for v in values[base]]
    return rows


def subprocess_env() -> dict[str, str]:
    """The environment of both sides' subprocesses: this tree importable, torch at this process's thread count."""
    threads = str(torch.get_num_threads())
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        **TERMINAL_ENV,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONWARNINGS": "ignore",
    }


def timed_run(cmd: list[str], cwd: str) -> float:
    """Wall seconds of ``cmd`` as a subprocess (output discarded); a failure raises with the end of its stderr."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    return seconds


def ours_process(root: Path, epochs: int) -> float:
    """Seconds of ``python -m lit_transfer fit --config small.yaml`` in a fresh runs folder."""
    work = tempfile.mkdtemp(prefix="lt_bench_small_proc_")
    try:
        config = Path(work) / "small.yaml"
        config.write_text(json.dumps(fit_config(root, str(Path(work) / "runs"), epochs), indent=2))  # JSON is YAML
        return timed_run([sys.executable, "-m", "lit_transfer", "fit", "--config", str(config)], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plain_process(root: Path, epochs: int) -> float:
    """Seconds of ``python plain_fit.py ROOT EPOCHS best.pt``."""
    work = tempfile.mkdtemp(prefix="lt_bench_small_proc_")
    try:
        script = str(plain_script())
        return timed_run([sys.executable, script, str(root), str(epochs), str(Path(work) / "best.pt")], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_small_process(quick: bool) -> list[dict[str, Any]]:
    """Section ``small_process`` (issue 17 goal b): whole-process wall time, lit_transfer fit ÷ a plain script.

    Also start-up alone: ``python -m lit_transfer fit --help`` ÷ ``python -c "import torch, torchvision"``.
    """
    root = digits_root()
    cwd = temp_dir("lt_bench_small_cwd_")
    cmd = _cmd("small_process", quick)
    plain = f"plain script: python plain_fit.py ({EPOCHS} epochs, best state_dict saved)"
    ours = f"ours: python -m lit_transfer fit --config small.yaml ({EPOCHS} epochs)"
    variants, loads = watch_load({plain: lambda: plain_process(root, EPOCHS), ours: lambda: ours_process(root, EPOCHS)})
    seconds = interleaved(variants, rounds=3 if quick else 4)  # a median of 3 outlasts one disturbed round
    section = "9 small process (wall s, start-up included)"
    rows = note_load(with_goal(ratio_rows(section, seconds, plain, cmd), f"{ours} / {plain}", "<= 1.1"), loads, 2)
    imports = 'python -c "import torch, torchvision"'
    helps = "python -m lit_transfer fit --help"
    start_variants, start_loads = watch_load(
        {
            imports: lambda: timed_run([sys.executable, "-c", "import torch, torchvision"], cwd),
            helps: lambda: timed_run([sys.executable, "-m", "lit_transfer", "fit", "--help"], cwd),
        }
    )
    start = interleaved(start_variants, rounds=3 if quick else 5)
    rows += note_load(ratio_rows("9 start-up (wall s)", start, imports, cmd), start_loads, 2)
    return with_values(rows, {**seconds, **start})
