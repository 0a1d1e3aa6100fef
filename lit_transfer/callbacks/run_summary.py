"""One summary of every fit: a TensorBoard HParams session and ``run_summary.json`` in the run folder.

:class:`RunSummary` registers the same hyperparameters for every fit (backbone, weights, freeze and unfreeze
schedule, optimizer, learning rate, scheduler, global batch size, image size, augmentation, epochs, precision,
devices, seed, data) in TensorBoard's HParams plugin, and logs the summary metrics (best ``val_acc``, ``val_loss`` at
that epoch, the best monitored value, ``test_acc``, epochs, wall time, training images/s) as scalars under
:data:`METRIC_TAGS`, so that runs of different configs compare in the HParams table and parallel coordinates.

TensorBoard keeps the *first* summary metadata it reads for a tag of a run folder, so a session summary written
again into a resumed run's new event file would be ignored. The session summary is therefore kept in its own small
event file, ``_hparams.tfevents.<N>``, which sorts before Lightning's ``events.out.tfevents.*`` files and is replaced
(a new file, then the old one deleted) whenever it changes: at fit start and at the end. A resumed run keeps one
session whose hyperparameters and status are the latest; its metrics are the newest scalars. A TensorBoard already
running shows the replaced hyperparameters after a restart (the metrics update live).

``run_summary.json`` (written by rank 0, atomically) says what the run is doing: ``running`` with pid and host from
fit start, epochs and best ``val_acc`` after each epoch, then ``finished`` (with the reason), ``interrupted``
(SIGTERM, Ctrl-C) or ``failed`` (with the error's first line). ``python -m lit_transfer runs`` reads it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_transfer.callbacks.signals import sigterm_received

SUMMARY_NAME = "run_summary.json"
HPARAMS_PREFIX = "_hparams.tfevents."  # sorts before events.out.tfevents.*; TensorBoard reads files with "tfevents"
SUMMARY_VERSION = 1
# the summary metrics: run_summary.json key -> TensorBoard scalar tag (the same for every run)
METRIC_TAGS: dict[str, str] = {
    "best_val_acc": "hparams/best_val_acc",
    "val_loss_at_best": "hparams/val_loss_at_best",
    "best_monitored": "hparams/best_monitored",
    "test_acc": "hparams/test_acc",
    "epochs_done": "hparams/epochs",
    "wall_time_s": "hparams/wall_time_s",
    "train_images_per_s": "hparams/train_images_per_s",
}
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"
HParams = dict[str, str | int | float]


def short_name(value: Any) -> str:
    """A short plain string for a config value: a class path's last part, lists joined by commas, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        name = value.get("name") or value.get("class_path")
        if name:
            return str(name).rsplit(".", 1)[-1] if "class_path" in value and not value.get("name") else str(name)
        return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    if isinstance(value, list | tuple):
        return ",".join(short_name(v) for v in value)
    return str(value)


def _unfreeze(hparams: Mapping[str, Any]) -> str:
    if hparams.get("unfreeze_at_epoch") is not None:
        return f"epoch {hparams['unfreeze_at_epoch']}"
    if hparams.get("unfreeze_milestones"):
        return "milestones " + short_name(list(hparams["unfreeze_milestones"]))
    return "none"


def _scheduler(trainer: pl.Trainer, hparams: Mapping[str, Any]) -> str:
    configured = hparams.get("lr_scheduler")
    if configured:
        return short_name(configured)
    warmup, cosine = float(hparams.get("warmup_epochs") or 0), bool(hparams.get("cosine"))
    if warmup or cosine:
        return " + ".join([*([f"warmup {warmup:g}"] if warmup else []), *(["cosine"] if cosine else [])])
    configs = getattr(trainer, "lr_scheduler_configs", None) or []
    return type(configs[0].scheduler).__name__ if configs else "none"


def _optimizer(trainer: pl.Trainer) -> tuple[str, float]:
    """The first optimizer's class and its head group's initial learning rate (group ``head``, else the first)."""
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers:
        return "none", 0.0
    groups = optimizers[0].param_groups
    group = next((g for g in groups if g.get("name") == "head"), groups[0] if groups else {})
    return type(optimizers[0]).__name__, float(group.get("initial_lr", group.get("lr", 0.0)))


def run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> HParams:
    """The hyperparameters every fit registers: the same keys, each always of the same plain type."""
    hp: Mapping[str, Any] = dict(getattr(pl_module, "hparams", {}) or {})
    data = getattr(trainer, "datamodule", None)
    optimizer, lr = _optimizer(trainer)
    batch_size = int(getattr(data, "batch_size", 0) or 0)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    checkpoint = trainer.checkpoint_callback
    monitor = checkpoint.monitor if isinstance(checkpoint, ModelCheckpoint) else None
    image_size = getattr(data, "image_size", None)
    root = getattr(data, "root", None) or getattr(data, "train_dir", None)
    return {
        "model": type(pl_module).__name__,
        "backbone": short_name(hp.get("backbone", "none")),
        "weights": short_name(hp.get("weights")),
        "freeze": short_name(hp.get("freeze", "none")),
        "unfreeze": _unfreeze(hp),
        "optimizer": optimizer,
        "lr": lr,
        "backbone_lr_factor": float(hp.get("backbone_lr_factor", 1.0) or 0.0),
        "scheduler": _scheduler(trainer, hp),
        "batch_size": batch_size,
        "accumulate_grad_batches": accumulate,
        "global_batch_size": batch_size * trainer.world_size * accumulate,
        "image_size": int(image_size) if isinstance(image_size, int | float) else 0,
        "augmentation": short_name(getattr(data, "augmentation", "none")),
        "max_epochs": int(trainer.max_epochs if trainer.max_epochs is not None else -1),
        "max_steps": int(trainer.max_steps),
        "precision": str(trainer.precision),
        "devices": int(trainer.num_devices),
        "num_nodes": int(trainer.num_nodes),
        "world_size": int(trainer.world_size),
        "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1") or -1),
        "data": type(data).__name__ if data is not None else "none",
        "data_root": short_name(root),
        "monitor": monitor or "none",
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any], fsync: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file beside it, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run folder's ``run_summary.json``, or ``None`` when it is missing or unreadable."""
    try:
        with open(Path(folder) / SUMMARY_NAME, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hparams_summaries(hparams: HParams, status: str | None = None, end_time: float | None = None) -> list[Any]:
    """The HParams plugin's experiment and session-start summaries, and a session-end one when ``status`` is given.

    The first two come from ``torch.utils.tensorboard.summary.hparams`` (whose session end always says success);
    the session end carries the run's real status: success (finished), failure (failed) or unknown (interrupted:
    the plugin has no "aborted").
    """
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata  # type: ignore[import-untyped]
    from tensorboard.plugins.hparams.api_pb2 import Status  # type: ignore[import-untyped]
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG  # type: ignore[import-untyped]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo  # type: ignore[import-untyped]
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    experiment, start, _success = hparams_summary(dict(hparams), dict.fromkeys(METRIC_TAGS.values(), 0.0))
    if status is None:
        return [experiment, start]
    code = {FINISHED: "STATUS_SUCCESS", FAILED: "STATUS_FAILURE"}.get(status, "STATUS_UNKNOWN")  # no "aborted"
    info = SessionEndInfo(status=Status.Value(code), end_time_secs=end_time or time.time())
    content = HParamsPluginData(session_end_info=info, version=PLUGIN_DATA_VERSION).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content))
    return [experiment, start, Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])]


def write_hparams_file(folder: Path, summaries: list[Any]) -> Path:
    """Replace the run folder's session-summary event file by one holding ``summaries``; returns its path.

    The new file has a new name (newer names sort first), so a reader never sees a file change under it; the older
    ones are deleted after it is in place.
    """
    from tensorboard.compat.proto.event_pb2 import Event  # type: ignore[import-untyped]
    from tensorboard.summary.writer.record_writer import RecordWriter  # type: ignore[import-untyped]

    now = time.time()
    path = folder / f"{HPARAMS_PREFIX}{10**19 - time.time_ns():020d}"
    tmp = folder / f".hparams-events.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        for summary in summaries:
            writer.write(Event(wall_time=now, step=0, summary=summary).SerializeToString())
    os.replace(tmp, path)
    for old in folder.glob(HPARAMS_PREFIX + "*"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def _batch_size(batch: Any) -> int:
    """The number of samples of a batch: the first dimension of its first tensor."""
    while isinstance(batch, list | tuple | Mapping) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else 0


def _metric(metrics: Mapping[str, Any], key: str | None) -> float | None:
    value = metrics.get(key) if key else None
    if value is None:
        return None
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    return number if math.isfinite(number) else None


def _first_line(exception: BaseException) -> str:
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0]}" if text else type(exception).__name__


class RunSummary(Callback):
    """Write the run's HParams session and ``run_summary.json`` (rank 0), and keep them current.

    Its state (best values, wall time, images) travels in checkpoints, so a resumed run continues its summary.
    Per epoch it costs one all-gather of two numbers under DDP, a few scalars and one small JSON write.
    """

    def __init__(self) -> None:
        self.best: dict[str, Any] = {"best_val_acc": None, "best_epoch": None, "val_loss_at_best": None}
        self.best_monitored: float | None = None
        self.wall_before = 0.0  # wall time of the earlier sessions of this run (from the checkpoint)
        self.images_before = 0.0  # training images (all ranks) and seconds of the earlier sessions
        self.seconds_before = 0.0
        self._restored = False
        self._fitting = False
        self._loaded: dict[str, Any] | None = None
        self._reset_session()

    def _reset_session(self) -> None:
        self._start = time.perf_counter()
        self._epoch_start = 0.0
        self._last_batch_end = 0.0
        self._images = 0  # this rank's training images and seconds in this session
        self._seconds = 0.0
        self._images_all = 0.0  # all ranks', as of the last epoch end
        self._seconds_all = 0.0
        self._folder: Path | None = None
        self._summary: dict[str, Any] = {}
        self._hparams: HParams = {}

    # --- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Best values, wall time and images so far: plain types, saved in every checkpoint."""
        return {
            **self.best,
            "best_monitored": self.best_monitored,
            "wall_time_s": self._wall_time(),
            "train_images": self.images_before + self._images_all,
            "train_seconds": self.seconds_before + self._seconds_all,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state; a fit resumed from it continues its summary (``test`` restores it too: unused)."""
        self._loaded = dict(state_dict)

    def _continue(self) -> None:
        """Continue the summary of the run the restored checkpoint belongs to."""
        state, self._loaded = self._loaded, None
        if state is None:
            return
        self.best = {key: state.get(key) for key in self.best}
        self.best_monitored = state.get("best_monitored")
        self.wall_before = float(state.get("wall_time_s") or 0.0)
        self.images_before = float(state.get("train_images") or 0.0)
        self.seconds_before = float(state.get("train_seconds") or 0.0)
        self._restored = True

    def _wall_time(self) -> float:
        return self.wall_before + (time.perf_counter() - self._start if self._fitting else 0.0)

    def _stop_clock(self) -> None:
        """The session is over: its wall time joins the earlier sessions'."""
        if self._fitting:
            self.wall_before += time.perf_counter() - self._start
            self._fitting = False

    def _images_per_s(self) -> float | None:
        seconds = self.seconds_before + self._seconds_all
        return (self.images_before + self._images_all) / seconds if seconds > 0 else None

    # --- where and what ------------------------------------------------------------------------------------------

    @staticmethod
    def _run_folder(trainer: pl.Trainer) -> Path | None:
        """Rank 0's local run folder (the first logger's ``log_dir``), or ``None``: no logger, a remote folder."""
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir and "://" not in str(log_dir):
                return Path(log_dir)
        return None

    def _metrics(self) -> dict[str, float | int | None]:
        return {
            "best_val_acc": self.best["best_val_acc"],
            "val_loss_at_best": self.best["val_loss_at_best"],
            "best_monitored": self.best_monitored,
            "test_acc": self._summary.get("test_acc"),
            "epochs_done": self._summary.get("epochs_done"),
            "wall_time_s": self._summary.get("wall_time_s"),
            "train_images_per_s": self._summary.get("train_images_per_s"),
        }

    def _log_metrics(self, trainer: pl.Trainer) -> None:
        values = {METRIC_TAGS[k]: float(v) for k, v in self._metrics().items() if v is not None}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # its SummaryWriter: a tenth of log_metrics' cost per value
                for tag, value in values.items():
                    logger.experiment.add_scalar(tag, value, trainer.global_step)

    def _write(self, trainer: pl.Trainer, final: bool = False) -> None:
        """Update and write ``run_summary.json`` (and the scalars); rank 0 only, never raising into training."""
        if self._folder is None:
            return
        completed = trainer.fit_loop.epoch_progress.current.completed
        self._summary.update(
            updated_at=_now(),
            epochs_done=max(completed, int(self._summary.get("epochs_done") or 0)),
            global_step=trainer.global_step,
            wall_time_s=round(self._wall_time(), 3),
            train_images=int(self.images_before + self._images_all),
            train_images_per_s=self._images_per_s(),
            **self.best,
            best_monitored=self.best_monitored,
        )
        try:
            write_json(self._folder / SUMMARY_NAME, self._summary, fsync=final)
        except OSError as err:  # a full disk must not stop training; the checkpoint IO reports it
            print(f"lit_transfer: could not write {self._folder / SUMMARY_NAME}: {err}")
        self._log_metrics(trainer)

    def _write_session(self, status: str | None) -> None:
        if self._folder is None or not self._hparams:
            return
        try:
            write_hparams_file(self._folder, hparams_summaries(self._hparams, status))
        except OSError as err:
            print(f"lit_transfer: could not write the HParams summary in {self._folder}: {err}")

    # --- fit -------------------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A new session starts (its clock too) when fitting."""
        if stage == "fit":
            self._reset_session()
            self._fitting = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register the hyperparameters and write ``run_summary.json`` as ``running`` (rank 0)."""
        self._continue()
        if not trainer.is_global_zero or trainer.fast_dev_run:  # type: ignore[attr-defined]  # set, undeclared
            return
        self._folder = self._run_folder(trainer)
        if self._folder is None:
            return
        self._folder.mkdir(parents=True, exist_ok=True)
        previous = read_summary(self._folder) or {}
        if not self._restored and previous.get("command", "fit") == "fit":
            self.best = {key: previous.get(key, value) for key, value in self.best.items()}  # resumed, no state
            self.best_monitored = previous.get("best_monitored", self.best_monitored)
        self._hparams = run_hparams(trainer, pl_module)
        resumed = bool(trainer.ckpt_path)
        self._summary = {
            "version": SUMMARY_VERSION,
            "command": "fit",
            "experiment": self._folder.parent.name,
            "run": self._folder.name,
            "status": RUNNING,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": previous.get("started_at", _now()) if resumed else _now(),
            "session_started_at": _now(),
            "sessions": int(previous.get("sessions", 0)) + 1 if resumed else 1,
            "resumed_from": str(trainer.ckpt_path) if resumed else None,
            "planned_epochs": self._hparams["max_epochs"],
            "max_steps": self._hparams["max_steps"],
            "epochs_done": trainer.fit_loop.epoch_progress.current.completed,
            "monitor": self._hparams["monitor"],
            "test_acc": None,
            "hparams": self._hparams,
        }
        self._write(trainer)
        self._write_session(None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's training clock."""
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's images and note when it ended."""
        self._images += _batch_size(batch)
        self._last_batch_end = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the best ``val_acc`` (its epoch and ``val_loss``) and the best monitored value."""
        if trainer.sanity_checking or not self._fitting:
            return
        metrics = trainer.callback_metrics
        acc = _metric(metrics, "val_acc")
        if acc is not None and (self.best["best_val_acc"] is None or acc > self.best["best_val_acc"]):
            self.best = {
                "best_val_acc": acc,
                "best_epoch": trainer.current_epoch,
                "val_loss_at_best": _metric(metrics, "val_loss"),
            }
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor:
            value = _metric(metrics, checkpoint.monitor)
            if value is not None:
                better = max if checkpoint.mode == "max" else min
                old = self.best_monitored
                self.best_monitored = value if old is None else better(old, value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add up every rank's images and time (all ranks, always), then update the summary (rank 0)."""
        self._seconds += max(self._last_batch_end - self._epoch_start, 0.0)
        local = torch.tensor([float(self._images), self._seconds], dtype=torch.float32, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local).reshape(-1, 2)
        self._images_all = float(gathered[:, 0].sum())
        self._seconds_all = float(gathered[:, 1].max())
        if trainer.is_global_zero:
            self._summary["epochs_done"] = trainer.current_epoch + 1
            self._write(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The fit reached its end: ``finished``, and why (max_epochs, max_steps, early stopping, max_time)."""
        if trainer.is_global_zero and self._folder is not None:
            self._summary.update(status=FINISHED, stop_reason=_stop_reason(trainer), ended_at=_now())
            self._write(trainer, final=True)
            self._write_session(FINISHED)
        self._stop_clock()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """``interrupted`` on SIGTERM or Ctrl-C, else ``failed`` with the error's first line (rank 0, no collective)."""
        if not trainer.is_global_zero or self._folder is None:
            return
        try:
            self._record_exception(trainer, exception)
        except Exception as err:  # never hide the exception that stopped the run
            print(f"lit_transfer: could not record the end of the run in {self._folder}: {err}")

    def _record_exception(self, trainer: pl.Trainer, exception: BaseException) -> None:
        stopping = isinstance(exception, SIGTERMException | KeyboardInterrupt) or sigterm_received()
        if self._summary.get("status") != RUNNING:  # the fit had finished: a later test failed
            self._summary.update(test_error=_first_line(exception))
            self._write(trainer, final=True)
            return
        status = INTERRUPTED if stopping else FAILED
        self._summary.update(status=status, ended_at=_now())
        if status == FAILED:
            self._summary["error"] = _first_line(exception)
        self._write(trainer, final=True)
        self._write_session(status)
        self._stop_clock()

    def add_to_summary(self, trainer: pl.Trainer, **values: Any) -> None:
        """Add ``values`` (plain types) to this fit's ``run_summary.json`` after the fit, e.g. its ``calibration``."""
        if trainer.is_global_zero and self._folder is not None and self._summary.get("command") == "fit":
            self._summary.update(values)
            self._write(trainer, final=True)

    # --- test ------------------------------------------------------------------------------------------------------

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The tested checkpoint's state is not this run's summary."""
        self._loaded = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add ``test_acc`` to this process's fit summary, or write a summary of this test run's own folder."""
        if not trainer.is_global_zero:
            return
        test_acc = _metric(trainer.callback_metrics, "test_acc")
        if self._folder is not None and self._summary.get("command") == "fit":
            self._summary.update(test_acc=test_acc, tested_checkpoint=str(trainer.ckpt_path or ""))
            self._write(trainer, final=True)
            return
        folder = self._run_folder(trainer)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        summary = {
            "version": SUMMARY_VERSION,
            "command": "test",
            "experiment": folder.parent.name,
            "run": folder.name,
            "status": FINISHED,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "ended_at": _now(),
            "tested_checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "test_acc": test_acc,
        }
        write_json(folder / SUMMARY_NAME, summary, fsync=True)


def _stop_reason(trainer: pl.Trainer) -> str:
    """Why a fit that ended normally stopped."""
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs != -1 and trainer.current_epoch >= max_epochs:
        return "max_epochs"
    if any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks):  # type: ignore[attr-defined]
        return "early_stopping"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        remaining = callback.time_remaining() if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return "max_time"
    return "stopped"
