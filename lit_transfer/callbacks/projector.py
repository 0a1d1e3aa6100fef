"""EmbeddingProjector: the validation images' backbone features, labelled and with thumbnails, for TensorBoard.

The files are TensorBoard's projector format, written into the run folder (``projector_config.pbtxt`` at its top,
one ``projector/<name>/`` folder of ``tensors.tsv``, ``metadata.tsv`` and ``sprite.png`` per write), so the PROJECTOR
tab shows them.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image

from lit_transfer.core.contract import data_info
from lit_transfer.data.base import ImageFilesDataset
from lit_transfer.features import FeatureDataset

CONFIG_NAME = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for in a run folder
FOLDER = "projector"
METADATA_HEADER = ("label", "prediction", "correct", "confidence", "path")
MAX_SPRITE_SIDE = 8192  # TensorBoard's projector refuses larger sprites
_BLOCK = re.compile(r"^embeddings \{\n.*?^\}\n?", re.MULTILINE | re.DOTALL)


def stratified_subset(targets: Sequence[int], max_points: int, seed: int = 0) -> list[int]:
    """At most ``max_points`` indices of ``targets``, each class in proportion to its size, in ascending order.

    Deterministic: the same targets give the same subset on every rank and every run. Each class's share is rounded
    by largest remainder (so the shares sum to ``max_points``), and its members are a seeded random draw.
    """
    n = len(targets)
    if n <= max_points:
        return list(range(n))
    labels = np.asarray(targets, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * max_points / n
    take = np.floor(quota).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), c))
    for c in order[: max_points - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = np.flatnonzero(labels == c)
        chosen += rng.permutation(members)[:k].tolist()
    return sorted(chosen)


def thumbnails(images: Sequence[torch.Tensor], size: int, chunk: int = 256) -> np.ndarray:
    """``uint8`` CHW images as ``size`` x ``size`` RGB tiles ``(N, size, size, 3)``, antialiased.

    Resized a chunk of same-sized images at a time (the evaluation view gives every image one size).
    """
    tiles = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < chunk and images[end].shape == images[start].shape:
            end += 1
        x = torch.stack(list(images[start:end])).float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        tiles[start:end] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        start = end
    return tiles


def sprite(tiles: np.ndarray) -> Image.Image:
    """Tiles ``(N, T, T, 3)`` row by row on a square sheet of ``ceil(sqrt(N))`` tiles a side (black where unused)."""
    n, t = len(tiles), tiles.shape[1]
    side = max(1, math.ceil(math.sqrt(n)))
    sheet = np.zeros((side * t, side * t, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, side)
        sheet[r * t : (r + 1) * t, c * t : (c + 1) * t] = tile
    return Image.fromarray(sheet)


def _cell(value: object) -> str:
    return re.sub(r"[\t\r\n]", " ", str(value))


def write_projector(
    log_dir: Path,
    name: str,
    features: np.ndarray,
    rows: Sequence[Sequence[object]],
    tiles: np.ndarray,
) -> Path:
    """Write one embedding into ``log_dir`` and list it in ``projector_config.pbtxt`` (earlier entries are kept).

    ``features`` ``(N, D)``; ``rows`` the ``N`` metadata rows (:data:`METADATA_HEADER`); ``tiles`` ``(N, T, T, 3)``.
    Returns the embedding's folder.
    """
    folder = log_dir / FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tensors.tsv", "w") as f:
        np.savetxt(f, np.asarray(features, dtype=np.float32), fmt="%.9g", delimiter="\t")  # float32 round trip
    lines = ["\t".join(METADATA_HEADER), *("\t".join(_cell(v) for v in row) for row in rows)]
    (folder / "metadata.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sprite(tiles).save(folder / "sprite.png")
    relative = f"{FOLDER}/{name}"
    t = tiles.shape[1]
    block = (
        "embeddings {\n"
        f'  tensor_name: "{name}"\n'
        f'  tensor_path: "{relative}/tensors.tsv"\n'
        f'  metadata_path: "{relative}/metadata.tsv"\n'
        f"  sprite {{\n"
        f'    image_path: "{relative}/sprite.png"\n'
        f"    single_image_dim: {t}\n"
        f"    single_image_dim: {t}\n"
        f"  }}\n"
        f"  tensor_shape: {features.shape[0]}\n"
        f"  tensor_shape: {features.shape[1]}\n"
        "}\n"
    )
    config = log_dir / CONFIG_NAME
    old = config.read_text() if config.is_file() else ""
    kept = [b if b.endswith("\n") else b + "\n" for b in _BLOCK.findall(old) if f'tensor_name: "{name}"' not in b]
    temporary = config.with_name(f".{CONFIG_NAME}.{os.getpid()}")
    temporary.write_text("".join([*kept, block]))
    os.replace(temporary, config)  # TensorBoard never reads a half-written config
    return folder


class EmbeddingProjector(Callback):
    """Validation features for TensorBoard's PROJECTOR tab, at the end of fit (and every ``every_n_epochs``).

    For at most ``max_points`` validation images (all of them, or a deterministic class-stratified subset), writes
    the backbone's features (``forward_features``; the feature cache's stored ones when the validation split is
    served from the cache), metadata (true class, predicted class from the model's head, whether it is right, the
    confidence, the file) and a sprite of ``thumbnail_size`` px thumbnails of the evaluation view. Under DDP each
    process computes a share of the points and rank 0 writes them all. Does nothing without a TensorBoard logger,
    under ``fast_dev_run``, or for models without ``forward_features`` and ``head`` and data without plain images.

    Args:
        enabled: write the projector.
        every_n_epochs: also write it after every this many training epochs; 0: only at the end of fit.
        max_points: most validation images shown.
        thumbnail_size: side in pixels of each image of the sprite.
    """

    def __init__(
        self, enabled: bool = True, every_n_epochs: int = 0, max_points: int = 2000, thumbnail_size: int = 32
    ) -> None:
        if every_n_epochs < 0 or max_points < 1 or not 8 <= thumbnail_size <= 256:
            raise ValueError(
                "projector: every_n_epochs must be at least 0, max_points positive and thumbnail_size 8 to 256"
            )
        if math.ceil(math.sqrt(max_points)) * thumbnail_size > MAX_SPRITE_SIDE:
            raise ValueError(
                f"projector: {max_points} thumbnails of {thumbnail_size} px make a sprite wider than "
                f"TensorBoard's {MAX_SPRITE_SIDE} px: lower max_points or thumbnail_size"
            )
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self.thumbnail_size = thumbnail_size
        self._written_at: int | None = None
        self.last_seconds: float | None = None  # how long the last write took (all of it, on rank 0)

    @staticmethod
    def _logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _active(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return (
            self.enabled
            and not getattr(trainer, "fast_dev_run", False)
            and self._logger(trainer) is not None
            and all(hasattr(pl_module, a) for a in ("forward_features", "head"))
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget the previous fit's writes."""
        self._written_at = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the projector after every ``every_n_epochs``-th epoch."""
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.project(trainer, pl_module, epochs_done=trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the projector of the trained model (unless the last epoch just wrote it)."""
        self.project(trainer, pl_module, epochs_done=trainer.current_epoch)

    # --- computing and writing ------------------------------------------------------------------------------------

    def project(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs_done: int) -> None:
        """Compute this process's share of the points, gather them all, and write them (rank 0).

        Every process takes the same decisions from the same inputs and then joins one gather, so none waits alone.
        """
        if not self._active(trainer, pl_module) or self._written_at == trainer.global_step:
            return
        loader = trainer.val_dataloaders
        dataset = getattr(loader, "dataset", None)
        data = data_info(getattr(trainer, "datamodule", None))
        if data is None or not isinstance(dataset, FeatureDataset | ImageFilesDataset) or len(dataset) == 0:
            return  # no validation images (a RotNet's rotations, plain dataloaders, no validation run)
        self._written_at = trainer.global_step
        start = time.perf_counter()
        chosen = stratified_subset([int(t) for t in dataset.targets], self.max_points)
        mine = chosen[trainer.global_rank :: trainer.world_size]
        try:
            shard: dict[str, Any] = self._compute(trainer, pl_module, data, dataset, mine)
        except Exception as err:  # a report must never stop training; the others still get this rank's (empty) share
            shard = {"error": f"{type(err).__name__}: {err}"}
        shards = _gather_objects(shard, trainer.world_size)
        if not trainer.is_global_zero:
            return
        errors = [s["error"] for s in shards if "error" in s]
        logger = self._logger(trainer)
        if errors or logger is None or logger.log_dir is None:
            rank_zero_warn(
                f"EmbeddingProjector: could not compute the features: {errors[0] if errors else 'no logger'}"
            )
            return
        try:
            self._write(trainer, pl_module, data, dataset, Path(logger.log_dir), shards, epochs_done, start)
        except Exception as err:  # a report must never stop training
            rank_zero_warn(f"EmbeddingProjector: could not write the projector: {err}")

    def _compute(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        data: Any,
        dataset: FeatureDataset | ImageFilesDataset,
        indices: list[int],
    ) -> dict[str, Any]:
        """Features, predictions and thumbnails of this process's ``indices`` (those whose image could be read)."""
        threads = max(1, min(8, len(os.sched_getaffinity(0)) // max(1, trainer.world_size)))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lit_transfer-projector") as pool:
            loaded = list(pool.map(lambda i: data.image_of("val", i), indices))
        images = {i: image for i, image in zip(indices, loaded, strict=True) if image is not None}
        cached: torch.Tensor | None = None
        if isinstance(dataset, FeatureDataset):  # the cached features: the backbone does not run again
            batch = dataset.__getitems__(list(images))
            cached = batch.features.float()
            images = {i: images[i] for i in batch.indices.tolist()}  # without the files the cache could not read
        kept = list(images)
        step = max(1, int(getattr(data, "batch_size", 64)))
        features, logits = [], []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for s in range(0, len(kept), step):
                    if cached is None:
                        x = torch.stack([images[i] for i in kept[s : s + step]]).to(pl_module.device)
                        f = pl_module.forward_features(x).float()  # type: ignore[operator]
                    else:
                        f = cached[s : s + step].to(pl_module.device)
                    features.append(f.cpu())
                    logits.append(pl_module.head(f).float().cpu())  # type: ignore[operator]
        finally:
            pl_module.train(was_training)
        if not kept:
            return {"indices": []}
        confidence, predicted = torch.cat(logits).softmax(dim=1).max(dim=1)
        return {
            "indices": kept,
            "features": torch.cat(features).numpy(),
            "predicted": predicted.tolist(),
            "confidence": confidence.tolist(),
            "tiles": thumbnails([images[i] for i in kept], self.thumbnail_size),
        }

    def _write(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        data: Any,
        dataset: FeatureDataset | ImageFilesDataset,
        log_dir: Path,
        shards: list[dict[str, Any]],
        epochs_done: int,
        start: float,
    ) -> None:
        shards = [s for s in shards if s["indices"]]
        if not shards:
            rank_zero_warn("EmbeddingProjector: no validation image could be read; nothing to project")
            return
        indices = np.concatenate([np.asarray(s["indices"], dtype=np.int64) for s in shards])
        order = np.argsort(indices, kind="stable")
        indices = indices[order]
        features = np.concatenate([s["features"] for s in shards])[order]
        tiles = np.concatenate([s["tiles"] for s in shards])[order]
        predicted = np.concatenate([np.asarray(s["predicted"], dtype=np.int64) for s in shards])[order]
        confidence = np.concatenate([np.asarray(s["confidence"], dtype=np.float64) for s in shards])[order]
        targets = np.asarray(dataset.targets, dtype=np.int64)[indices]
        names = list(getattr(pl_module, "class_names", None) or [])

        def name(c: int) -> str:
            return names[c] if 0 <= c < len(names) else str(c)

        paths = data.paths_of("val", indices.tolist())
        rows = [
            (name(int(t)), name(int(p)), str(bool(t == p)).lower(), f"{c:.4f}", path)
            for t, p, c, path in zip(targets, predicted, confidence, paths, strict=True)
        ]
        tag = f"val_epoch{epochs_done}_step{trainer.global_step}"
        folder = write_projector(log_dir, tag, features, rows, tiles)
        self.last_seconds = time.perf_counter() - start
        rank_zero_info(
            f"projector: {len(indices):,} validation images x {features.shape[1]} features in {folder} "
            f"({self.last_seconds:.1f} s)"
        )


def _gather_objects(item: Any, world: int) -> list[Any]:
    """Every rank's ``item``, in rank order (any size: ranks may hold different numbers of points)."""
    if world == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [item]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, item)
    return out
