"""FeatureCache: train a head on a frozen backbone's features computed once, instead of recomputing them every epoch."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_transfer import features as fc
from lit_transfer.data.base import BadSample, BaseImageDataModule, EpochSampler, ImageFilesDataset, collate_skipping_bad
from lit_transfer.data.transforms import is_deterministic

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
    """

    def __init__(self, enabled: bool | Literal["auto"] = "auto", dir: str | None = None, rebuild: bool = False) -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"cache_features.enabled={enabled!r}: use true, false or auto")
        self.enabled = enabled
        self.dir = dir
        self.rebuild = rebuild
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

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Detach from the data module and close the memory maps."""
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, BaseImageDataModule) and datamodule.dataset_wrapper == self.dataset_for:
            datamodule.set_dataset_wrapper(None)
        self._open.clear()

    def split_reason(self, split: str, dataset: Dataset) -> str | None:
        """Why a split cannot be served from the cache, or ``None`` when it can."""
        if type(dataset) is not ImageFilesDataset:
            return f"{split} split: off, its items are not plain images ({type(dataset).__name__})"
        if not is_deterministic(dataset.transform):
            return (
                f"{split} split: loading images, not cached features: its transform is random (augmentation), so "
                "the features change every epoch. Set data.init_args.augmentation: none to cache it"
            )
        return None

    # --- building and reading entries -----------------------------------------------------------------------------

    def dataset_for(self, datamodule: BaseImageDataModule, split: str, dataset: Dataset) -> fc.FeatureDataset | None:
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
            return self._open[(split, key)]
        name = f"{split}-{model.hparams.get('backbone', 'model')}-{key}"
        final = self.folder / name
        strategy = trainer.strategy
        if self.rebuild and final not in self._rebuilt:
            self._rebuilt.add(final)
            if trainer.is_global_zero and final.exists():
                shutil.rmtree(final)
            strategy.barrier("feature_cache_rebuild")
        if fc.entry_is_complete(final, key):
            try:
                opened = self._read(final, split, dataset)
            except (OSError, ValueError) as err:  # damaged after it was written (disk, a hand edit): build it again
                rank_zero_warn(f"feature cache: entry {final} is unreadable ({err}); extracting it again")
                if trainer.is_global_zero:
                    shutil.rmtree(final, ignore_errors=True)
                strategy.barrier("feature_cache_damaged")
        if not fc.entry_is_complete(final, key):
            self._extract(trainer, model, datamodule, split, dataset, final, key, parts)
            opened = self._read(final, split, dataset, extracted=True)
        self._open[(split, key)] = opened
        return opened

    @staticmethod
    def _read(folder: Path, split: str, dataset: ImageFilesDataset, extracted: bool = False) -> fc.FeatureDataset:
        meta = fc.read_meta(folder)
        bad = {int(b["index"]): BadSample(b["path"], b["split"], b["reason"]) for b in meta["bad"]}
        opened = fc.FeatureDataset(folder, dataset.targets, bad)
        if not extracted:
            rank_zero_info(
                f"feature cache: {split} features of {len(dataset):,} images read from {folder} "
                f"({meta['size']:,} x {meta['width']})"
            )
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

    def _extract(
        self,
        trainer: pl.Trainer,
        model: pl.LightningModule,
        datamodule: BaseImageDataModule,
        split: str,
        dataset: ImageFilesDataset,
        final: Path,
        key: str,
        parts: dict[str, Any],
    ) -> None:
        """Every rank encodes its shard into a part folder; rank 0 merges them and publishes the entry."""
        strategy = trainer.strategy
        world, rank = trainer.world_size, trainer.global_rank
        self.folder.mkdir(parents=True, exist_ok=True)
        # rank 0's folder, on every rank
        build = cast(Path, strategy.broadcast(fc.build_folder(self.folder, final.name) if rank == 0 else None, src=0))
        rank_zero_info(
            f"feature cache: extracting {split} features of {len(dataset):,} images with "
            f"{model.hparams.get('backbone')} into {final}"
        )
        start = time.perf_counter()
        sampler = EpochSampler(len(dataset), False, datamodule.seed, world, rank, pad=False)
        loader = DataLoader(
            dataset,
            batch_size=datamodule.batch_size,
            sampler=sampler,
            num_workers=datamodule.loader_workers(),
            collate_fn=collate_skipping_bad,
            pin_memory=model.device.type == "cuda",
        )
        was_training = model.backbone.training  # type: ignore[union-attr]
        model.backbone.eval()  # type: ignore[union-attr]
        try:
            width, bad = fc.extract_shard(
                model.forward_features,  # type: ignore[arg-type]
                loader,
                len(sampler),
                Path(build) / f"part-{rank}",
                model.device,
                trainer.precision_plugin.forward_context,
                _Progress(split, len(sampler), world) if rank == 0 else None,
            )
        finally:
            model.backbone.train(was_training)  # type: ignore[union-attr]
        index_of = {str(Path(dataset.root) / p): i for i, p in enumerate(dataset.paths)}
        found = [{"index": index_of.get(b.path, -1), "path": b.path, "split": b.split, "reason": b.reason} for b in bad]
        shards = _gather_objects((width, found), world)
        strategy.barrier("feature_cache_extracted")
        if rank == 0:
            width = max(w for w, _ in shards)  # 0 from a rank whose images were all unreadable
            bad_all = [b for _, bad_of_rank in shards for b in bad_of_rank]
            fc.assemble([Path(build) / f"part-{r}" for r in range(world)], len(dataset), width, Path(build))
            for r in range(world):
                shutil.rmtree(Path(build) / f"part-{r}", ignore_errors=True)
            meta = {"key": key, "parts": parts, "size": len(dataset), "width": width, "bad": bad_all}
            fc.publish(Path(build), final, meta)
        strategy.barrier("feature_cache_published")
        if not fc.entry_is_complete(final, key):
            raise RuntimeError(
                f"feature cache entry {final} is missing on rank {rank}: under multi-node training, "
                "cache_features.dir must be on a file system every node sees"
            )
        size = fc.folder_size(final)
        rank_zero_info(
            f"feature cache: {split} features ready ({len(dataset):,} x {width}, {size / 2**20:.1f} MiB) "
            f"in {time.perf_counter() - start:.1f} s"
        )


class _Progress:
    """Logs the extraction's progress (rank 0's shard) every 30 seconds, so a long extraction is not silent."""

    def __init__(self, split: str, total: int, world: int, every: float = 30.0) -> None:
        self.split, self.total, self.world, self.every = split, total, world, every
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        rate = done * self.world / (now - self.start)
        left = (self.total - done) * self.world / rate
        rank_zero_info(
            f"feature cache: {self.split} {done / self.total:.0%} ({rate:.0f} images/s, about {left:.0f} s left)"
        )


def _gather_objects(item: Any, world: int) -> list[Any]:
    """Every rank's ``item``, in rank order."""
    if world == 1:
        return [item]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, item)
    return out


_ENTRY_FILES = frozenset({fc.META_NAME, fc.FEATURES_NAME, fc.VALID_NAME, fc.MARKER_NAME})
_PART_FILES = frozenset({fc.FEATURES_NAME, fc.INDICES_NAME})
_BUILDING = re.compile(r"^\.building-.+-[0-9a-f]{8}$")
_PART = re.compile(r"^part-[0-9]+$")


def _plain_files(folder: Path, allowed: frozenset[str], parts: bool = False) -> list[Path] | str:
    """The files of ``folder`` when it holds only ``allowed`` regular files (and ``part-N`` shards), else why not."""
    files: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.is_symlink():
            return f"{child.name} is a symbolic link"
        if parts and child.is_dir() and _PART.match(child.name):
            inner = _plain_files(child, _PART_FILES)
            if isinstance(inner, str):
                return f"{child.name}/: {inner}"
            files += [*inner, child]  # a shard's files, then the shard's folder
        elif child.is_file() and child.name in allowed:
            files.append(child)
        else:
            return f"{child.name} is not a file the cache writes"
    return files


def _entry_files(entry: Path) -> list[Path] | str:
    """What to delete for ``entry`` (its files, then the folder) when it provably is a cache entry, else why not."""
    if entry.is_symlink():
        return "a symbolic link"
    if not entry.is_dir():
        return "not a file the cache writes"
    if _BUILDING.match(entry.name):  # an extraction that was interrupted: no metadata yet, only the marker
        if not fc.is_cache_marker(entry / fc.MARKER_NAME):
            return f"named like an unfinished entry, but without a valid {fc.MARKER_NAME}"
        files = _plain_files(entry, _ENTRY_FILES, parts=True)
        return files if isinstance(files, str) else [*files, entry]
    try:
        meta = fc.read_meta(entry)
    except (OSError, ValueError):
        return f"no readable {fc.META_NAME}"
    key = meta.get("key") if isinstance(meta, dict) else None
    if not isinstance(key, str) or meta.get("complete") is not True or not isinstance(meta.get("parts"), dict):
        return f"{fc.META_NAME} is not a feature cache entry's"
    if not entry.name.endswith(f"-{key}") or fc.cache_key(meta["parts"]) != key:
        return f"{fc.META_NAME} does not match the entry's name and key"
    files = _plain_files(entry, _ENTRY_FILES)
    return files if isinstance(files, str) else [*files, entry]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            path.rmdir()  # emptied just before: never recursive
        else:
            path.unlink()


@dataclass
class CacheCleaning:
    """What :func:`clean_cache` found in a folder, and deleted (or, dry, would delete).

    Attributes:
        folder: the folder cleaned.
        state: ``"missing"`` (no such folder), ``"not_a_folder"``, ``"empty"`` (a folder without entries),
            ``"not_a_cache"`` (none of its entries is the cache's: nothing deleted) or ``"cleaned"``.
        entries: the cache's own entries, deleted (or would be), in order; unfinished ones start with a dot.
        kept: what is not the cache's, as ``"name (why not)"``; kept in place.
        size: bytes in the deleted files.
        folder_removed: whether the folder itself went (or would go): only when nothing but the cache was in it.
    """

    folder: Path
    state: Literal["missing", "not_a_folder", "empty", "not_a_cache", "cleaned"]
    entries: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    size: int = 0
    folder_removed: bool = False


def clean_cache(folder: Path, dry_run: bool = False) -> CacheCleaning:
    """Delete the entries of the feature cache in ``folder``, and nothing else; ``dry_run`` deletes nothing.

    Only what is provably the cache's own goes: entries whose ``meta.json`` matches their name and key and which
    hold only the cache's files, unfinished entries holding the cache's marker, then the folder if nothing else is
    left. A folder none of whose entries is the cache's is left as it is (``state="not_a_cache"``).
    """
    if not folder.exists() and not folder.is_symlink():
        return CacheCleaning(folder, "missing")
    if folder.is_symlink() or not folder.is_dir():
        return CacheCleaning(folder, "not_a_folder")
    own: list[tuple[Path, list[Path]]] = []
    kept: list[str] = []
    for child in sorted(folder.iterdir()):
        found = _entry_files(child)
        if isinstance(found, str):
            kept.append(f"{child.name} ({found})")
        else:
            own.append((child, found))
    if not own:
        return CacheCleaning(folder, "not_a_cache" if kept else "empty", kept=kept)
    size = sum(f.stat().st_size for _, files in own for f in files if f.is_file())
    if not dry_run:
        for _, files in own:
            _remove(files)
        if not kept:  # nothing but the cache's own entries was in it
            folder.rmdir()
    return CacheCleaning(folder, "cleaned", [e for e, _ in own], kept, size, folder_removed=not kept)
