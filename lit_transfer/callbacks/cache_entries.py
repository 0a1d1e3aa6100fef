"""One feature cache entry: its extraction by every rank into one folder, and opening it for the loaders."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_transfer import features as fc
from lit_transfer.data.base import BadSample, BaseImageDataModule, EpochSampler, ImageFilesDataset, collate_skipping_bad


def open_entry(folder: Path, split: str, dataset: ImageFilesDataset, extracted: bool = False) -> fc.FeatureDataset:
    """Open the entry ``folder`` as the features of ``split``'s ``dataset`` (logged unless just ``extracted``)."""
    meta = fc.read_meta(folder)
    bad = {int(b["index"]): BadSample(b["path"], b["split"], b["reason"]) for b in meta["bad"]}
    opened = fc.FeatureDataset(folder, dataset.targets, bad)
    if not extracted:
        rank_zero_info(
            f"feature cache: {split} features of {len(dataset):,} images read from {folder} "
            f"({meta['size']:,} x {meta['width']})"
        )
    return opened


def extract_entry(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: BaseImageDataModule,
    split: str,
    dataset: ImageFilesDataset,
    cache: Path,
    final: Path,
    key: str,
    parts: dict[str, Any],
) -> None:
    """Every rank encodes its shard into a part folder; rank 0 merges them and publishes the entry."""
    strategy = trainer.strategy
    world, rank = trainer.world_size, trainer.global_rank
    cache.mkdir(parents=True, exist_ok=True)
    # rank 0's folder, on every rank
    build = cast(Path, strategy.broadcast(fc.build_folder(cache, final.name) if rank == 0 else None, src=0))
    rank_zero_info(
        f"feature cache: extracting {split} features of {len(dataset):,} images with "
        f"{getattr(model, 'backbone_name', None) or model.hparams.get('backbone')} into {final}"
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
