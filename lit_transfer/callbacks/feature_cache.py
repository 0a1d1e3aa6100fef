"""FeatureCache: train a head on a frozen backbone's features computed once, instead of recomputing them every epoch.

Extracting and opening one entry is in :mod:`~lit_transfer.callbacks.cache_entries`, ``clean-cache``'s deletion in
:mod:`~lit_transfer.callbacks.cache_cleaning`; the names other code imports from here stay importable from here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler, ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import Dataset

from lit_transfer import features as fc
from lit_transfer.callbacks.cache_cleaning import CacheCleaning as CacheCleaning  # re-exported
from lit_transfer.callbacks.cache_cleaning import clean_cache as clean_cache  # re-exported
from lit_transfer.callbacks.cache_entries import _Progress as _Progress  # re-exported
from lit_transfer.callbacks.cache_entries import extract_entry, open_entry
from lit_transfer.core.errors import ConfigError
from lit_transfer.core.lightning_private import checkpoint_schedule, share_live_step_count, share_step_count
from lit_transfer.data.base import BaseImageDataModule, ImageFilesDataset
from lit_transfer.data.transforms import is_deterministic
from lit_transfer.data.tta import views_of

DEFAULT_DIR_NAME = "feature_cache"


class FeatureCache(Callback):
    """Compute a fully frozen backbone's features once per split, store them memory-mapped, train the head on them.

    Safe only when the features cannot change between epochs: the backbone is fully frozen with no unfreeze
    schedule (it then runs in eval mode, without dropout or BatchNorm updates), and the split's transform is
    deterministic. Validation, test and predict splits always use the deterministic evaluation transform, so with a
    frozen backbone they are cached even when training augments; the training split is then loaded as images, and
    one log line says why. Results equal the uncached path's: the same samplers give the same batches in the same
    order, and files that fail to decode are left out of the same batches.

    Args:
        enabled: ``auto`` caches whenever it is safe; ``true`` also caches when safe, but warns when it is not;
            ``false`` never caches.
        dir: cache folder; default ``<runs_dir>/feature_cache`` (entries are keyed by content, so experiments share
            them). Delete it, or run ``python -m lit_transfer clean-cache``, to reclaim the space.
        rebuild: recompute this run's entries even when a matching entry exists.
        fused_steps: when the training split is served from the cache, train this many of its batches per
            Lightning step (:mod:`~lit_transfer.models.fused_steps`): each batch is still one optimizer step, and
            ``max_steps``, step- and epoch-wise schedulers and gradient clipping keep their meaning; configs that
            count Lightning batches (``limit_train_batches``, ``val_check_interval`` within an epoch,
            ``accumulate_grad_batches``, EMA, step-based checkpoints, ``ReduceLROnPlateau``) are refused. 1: off.
    """

    def __init__(
        self,
        enabled: bool | Literal["auto"] = "auto",
        dir: str | None = None,
        rebuild: bool = False,
        fused_steps: int = 1,
    ) -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"cache_features.enabled={enabled!r}: use true, false or auto")
        if isinstance(fused_steps, bool) or not isinstance(fused_steps, int) or fused_steps < 1:
            raise ValueError(f"cache_features.fused_steps={fused_steps!r}: use a whole number of batches, 1 for off")
        self.enabled = enabled
        self.dir = dir
        self.rebuild = rebuild
        self.fused_steps = fused_steps
        self._fused: pl.LightningModule | None = None  # the model switched to manual optimization for fused steps
        self._trainer: pl.Trainer | None = None
        self._model: pl.LightningModule | None = None
        self._said: set[str] = set()
        self._rebuilt: set[Path] = set()
        self._open: dict[tuple[str, str], fc.FeatureDataset] = {}
        self._weights: str | None = None

    @property
    def folder(self) -> Path:
        """Where entries are stored."""
        return Path(self.dir or DEFAULT_DIR_NAME)

    # --- when to cache --------------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if message in self._said:
            return
        self._said.add(message)
        if self.enabled is True:
            rank_zero_warn(f"feature cache: {message}")
        else:
            rank_zero_info(f"feature cache: {message}")

    def model_reason(self, pl_module: pl.LightningModule) -> str | None:
        """Why this model's features cannot be cached, or ``None`` when they can."""
        if not all(hasattr(pl_module, a) for a in ("backbone", "head", "forward_features", "backbone_fully_frozen")):
            return f"off: {type(pl_module).__name__} has no separate backbone and head"
        if getattr(pl_module, "milestones", None):
            return "off: the backbone unfreezes during training (model.unfreeze_at_epoch / unfreeze_milestones)"
        if not pl_module.backbone_fully_frozen:
            return "off: the backbone trains; caching needs model.init_args.freeze: backbone"
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Offer the cache to the data module when the model's backbone is fully frozen."""
        if self.enabled is False:
            return
        self._weights = None  # checkpoint weights are loaded after setup: hash them when first needed
        datamodule = getattr(trainer, "datamodule", None)
        reason = self.model_reason(pl_module)
        if reason is None and not isinstance(datamodule, BaseImageDataModule):
            reason = "off: the data module is not a lit_transfer image data module"
        if reason is None and trainer.fast_dev_run:  # type: ignore[attr-defined]  # Lightning sets it, undeclared
            reason = "off under fast_dev_run, which would extract every image of a split for one batch"
        if reason is not None:
            if self.enabled is True:
                self._say(reason)
            return
        self._trainer, self._model = trainer, pl_module
        datamodule.set_dataset_wrapper(self.dataset_for)  # type: ignore[union-attr]
        if self.fused_steps > 1 and stage == "fit":
            self._setup_fused(trainer, pl_module, cast(BaseImageDataModule, datamodule))

    def _setup_fused(self, trainer: pl.Trainer, pl_module: pl.LightningModule, datamodule: BaseImageDataModule) -> None:
        """Switch the model to fused steps when its training split will be served from the cache."""
        reason = self.split_reason("train", datamodule.split_dataset("train"))
        if reason is not None:
            self._say(f"fused_steps off: {reason}")
            return
        refusal = fused_refusal(trainer, pl_module)
        if refusal is not None:
            raise ConfigError(
                f"cache_features.fused_steps={self.fused_steps} cannot keep the meaning of {refusal}; remove that "
                "setting or set cache_features.fused_steps: 1"
            )
        pl_module.automatic_optimization = False  # read per batch by Lightning's loop; restored at teardown
        self._fused = pl_module
        rank_zero_info(f"feature cache: {self.fused_steps} training batches per Lightning step (fused_steps)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse schedulers fused steps cannot step (those of a module's own ``configure_optimizers`` too)."""
        if self._fused is pl_module and any(
            isinstance(c.scheduler, ReduceLROnPlateau) for c in trainer.lr_scheduler_configs
        ):
            raise ConfigError(
                f"cache_features.fused_steps={self.fused_steps}: ReduceLROnPlateau steps on a monitored metric, "
                "which fused steps do not step; set cache_features.fused_steps: 1"
            )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Let a run saved with fused steps resume without them, and the other way round, at the same step."""
        share_step_count(checkpoint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Detach from the data module and close the memory maps."""
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, BaseImageDataModule) and datamodule.dataset_wrapper == self.dataset_for:
            datamodule.set_dataset_wrapper(None)
        self._open.clear()
        if self._fused is not None:
            share_live_step_count(trainer)  # trainer.global_step reads the other counter from now on
            self._fused.automatic_optimization = True
            self._fused = None

    def split_reason(self, split: str, dataset: Dataset) -> str | None:
        """Why a split cannot be served from the cache, or ``None`` when it can."""
        if type(dataset) is not ImageFilesDataset:
            return f"{split} split: off, its items are not plain images ({type(dataset).__name__})"
        if views_of(dataset.transform) > 1:  # cached features are one view per image
            return f"{split} split: loading images, not cached features: data.init_args.tta makes several views"
        if not is_deterministic(dataset.transform):
            return (
                f"{split} split: loading images, not cached features: its transform is random (augmentation), so "
                "the features change every epoch. Set data.init_args.augmentation: none to cache it"
            )
        if split == "train" and getattr(getattr(self._model, "mixing", None), "enabled", False):
            # mixing features is not mixing images: the cache must not change what the run trains on
            return (
                "train split: loading images, not cached features: model.init_args.mixup_alpha/cutmix_alpha mix the "
                "training images, which mixing cached features would not reproduce"
            )
        return None

    # --- building and reading entries -----------------------------------------------------------------------------

    def dataset_for(self, datamodule: BaseImageDataModule, split: str, dataset: Dataset) -> Dataset | None:
        """The cached features of ``split`` (extracted now if needed), or ``None`` to load images as usual."""
        trainer, model = self._trainer, self._model
        if trainer is None or model is None or len(dataset) == 0:  # type: ignore[arg-type]
            return None
        reason = self.split_reason(split, dataset)
        if reason is not None:
            self._say(reason)
            return None
        assert isinstance(dataset, ImageFilesDataset)
        key, parts = self._key(trainer, model, split, dataset)
        if (split, key) in self._open:
            return self._served(split, self._open[(split, key)], datamodule)
        # one folder name: a backbone such as timm/<arch> or hf-hub:<org>/<repo> must not make nested folders
        label = getattr(model, "backbone_name", None) or model.hparams.get("backbone", "model")  # my_pkg.MyNet
        backbone = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label))
        name = f"{split}-{backbone}-{key}"
        final = self.folder / name
        strategy = trainer.strategy
        if self.rebuild and final not in self._rebuilt:
            self._rebuilt.add(final)
            if trainer.is_global_zero and final.exists():
                shutil.rmtree(final)
            strategy.barrier("feature_cache_rebuild")
        if fc.entry_is_complete(final, key):
            try:
                opened = open_entry(final, split, dataset)
            except (OSError, ValueError) as err:  # damaged after it was written (disk, a hand edit): build it again
                rank_zero_warn(f"feature cache: entry {final} is unreadable ({err}); extracting it again")
                if trainer.is_global_zero:
                    shutil.rmtree(final, ignore_errors=True)
                strategy.barrier("feature_cache_damaged")
        if not fc.entry_is_complete(final, key):
            extract_entry(trainer, model, datamodule, split, dataset, self.folder, final, key, parts)
            opened = open_entry(final, split, dataset, extracted=True)
        self._open[(split, key)] = opened
        return self._served(split, opened, datamodule)

    def _served(self, split: str, opened: fc.FeatureDataset, datamodule: BaseImageDataModule) -> Dataset:
        """The entry as its loader serves it: several batches at a time for fused steps' training split."""
        if split == "train" and self._fused is not None and self._fused is self._model:
            return fc.FusedFeatureDataset(opened, datamodule.batch_size, self.fused_steps)
        return opened

    def _weights_digest(self, model: pl.LightningModule) -> str:
        # the backbone is frozen for the whole run: hash its weights (a second or so for large models) once
        if self._weights is None:
            self._weights = fc.weights_digest(model.backbone)  # type: ignore[arg-type]
        return self._weights

    def _key(
        self, trainer: pl.Trainer, model: pl.LightningModule, split: str, dataset: ImageFilesDataset
    ) -> tuple[str, dict[str, Any]]:
        hparams = model.hparams
        parts = {
            "split": split,
            "backbone": hparams.get("backbone"),
            "weights": self._weights_digest(model),
            "mean": cast(torch.Tensor, model.mean).flatten().tolist(),  # buffers of a TransferClassifier
            "std": cast(torch.Tensor, model.std).flatten().tolist(),
            "channels_last": bool(hparams.get("channels_last", False)),
            "compile": repr(hparams.get("compile", False)),
            "precision": str(trainer.precision),
            "device": model.device.type,
            "torch": torch.__version__,
            "transform": repr(dataset.transform),
            "min_side": dataset.min_side,
            "files": fc.files_digest(dataset.root, dataset.paths, dataset.targets),
        }
        key = fc.cache_key(parts)
        return trainer.strategy.broadcast(key, src=0), parts  # one key for all ranks, whatever their clocks say


def fused_refusal(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
    """The first setting whose meaning counts Lightning batches, which fused steps would change; ``None`` if none."""
    limit = trainer.limit_train_batches
    if limit is not None and (isinstance(limit, int) or limit != 1.0):  # an int counts batches: 1 is one batch
        return f"trainer.limit_train_batches={trainer.limit_train_batches} (it would count fused batches)"
    if isinstance(trainer.val_check_interval, int) or trainer.val_check_interval != 1.0:
        return f"trainer.val_check_interval={trainer.val_check_interval} (validation within an epoch)"
    if trainer.accumulate_grad_batches != 1:
        return f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, WeightAveraging) and getattr(callback, "enabled", True):
            return f"{type(callback).__name__} (EMA / weight averaging updates once per Lightning batch)"
        if isinstance(callback, GradientAccumulationScheduler):
            return "GradientAccumulationScheduler (accumulation)"
        if isinstance(callback, ModelCheckpoint) and (
            checkpoint_schedule(callback)[0] or checkpoint_schedule(callback)[2] is not None
        ):
            return "a checkpoint every_n_train_steps / train_time_interval (saved at Lightning batch ends)"
    scheduler = pl_module.hparams.get("lr_scheduler") if hasattr(pl_module, "hparams") else None
    if isinstance(scheduler, dict) and str(scheduler.get("class_path", "")).endswith("ReduceLROnPlateau"):
        return "lr_scheduler ReduceLROnPlateau (it steps on a monitored metric)"
    return None
