"""Cached backbone features: extraction into memory-mapped files, their content key, and the dataset that serves them.

A frozen backbone in eval mode maps an image through a deterministic transform to the same feature vector every
epoch, so its features can be computed once and the head trained on them. An entry of the cache is one split's
features, stored under a key that covers everything the features depend on: the backbone's actual weights (hashed),
the input normalization and memory format, the numeric precision and device type, the transform, the decode size and
every file's path, label, size and modification time. Change any of these and the key changes, so a stale entry is
never read. Entries are written into a temporary folder and renamed into place when complete, so an interrupted
extraction never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lit_transfer.core.batches import FeatureBatch, FeatureSteps
from lit_transfer.core.batches import keep_batch as keep_batch  # re-exported: the feature loaders' collate

FORMAT_VERSION = 1
META_NAME = "meta.json"
FEATURES_NAME = "features.npy"
VALID_NAME = "valid.npy"
INDICES_NAME = "indices.npy"
# written into every entry (from the start of its extraction), so that clean-cache can tell it from other folders
MARKER_NAME = ".lit_transfer-feature-cache"
MARKER = {"lit_transfer": "feature_cache", "format": FORMAT_VERSION}


def weights_digest(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, dtypes, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy() if value.numel() else b"")  # the buffer itself, no copy
    return digest.hexdigest()


def files_digest(root: Path, paths: Sequence[str], targets: Sequence[int]) -> str:
    """A hash of the files of a split: relative path, target, size and modification time of each, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for path, target in zip(paths, targets, strict=True):
        try:
            stat = os.stat(root / path)
            facts = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            facts = "missing"
        digest.update(f"{path}|{target}|{facts}\n".encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """The key of a cache entry: a hash of its description (every value that changes the features)."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class FeatureDataset(Dataset):
    """Memory-mapped features of one split, served a whole batch at a time.

    Items are addressed like the image dataset's (an index, or ``(index, epoch)`` from the data module's samplers),
    so the same sampler yields the same batches; files that could not be decoded at extraction are left out of
    their batch, exactly as the image loader leaves them out.
    """

    def __init__(self, folder: Path, targets: Sequence[int], bad: dict[int, Any]) -> None:
        self.folder = Path(folder)
        self.features = np.load(self.folder / FEATURES_NAME, mmap_mode="r")
        self.valid = np.load(self.folder / VALID_NAME)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.bad = bad
        if len(self.features) != len(self.targets) or len(self.valid) != len(self.targets):
            raise ValueError(f"feature cache entry {self.folder} does not match its split; delete it to rebuild")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, items: Sequence[Any]) -> FeatureBatch:
        index = np.fromiter((i[0] if isinstance(i, tuple) else i for i in items), dtype=np.int64, count=len(items))
        keep = index[self.valid[index]]
        bad = [self.bad[i] for i in index[~self.valid[index]].tolist() if i in self.bad]
        return FeatureBatch(
            torch.from_numpy(np.ascontiguousarray(self.features[keep])),
            torch.from_numpy(self.targets[keep]),
            torch.from_numpy(keep),
            bad,
        )

    def __getitem__(self, item: Any) -> FeatureBatch:
        return self.__getitems__([item])


class FusedFeatureDataset(Dataset):
    """A training split's cached features served ``steps`` batches at a time, as one :class:`FeatureSteps`.

    Its loader draws ``steps * batch_size`` items per batch from the same sampler; the items are cut into batches of
    ``batch_size`` and each is read as :class:`FeatureDataset` reads it, so the batches are the unfused loader's.
    A last batch of a single row is left out, as the image loader leaves it out (``drop_last`` for one image).
    """

    def __init__(self, inner: FeatureDataset, batch_size: int, steps: int) -> None:
        if steps < 1 or batch_size < 1:
            raise ValueError(f"fused steps need steps >= 1 and batch_size >= 1, not {steps} and {batch_size}")
        self.inner = inner
        self.batch_size = batch_size
        self.steps_per_batch = steps

    @property
    def targets(self) -> np.ndarray:
        """The split's labels."""
        return self.inner.targets

    def __len__(self) -> int:
        return len(self.inner)

    def batches_for(self, items: int) -> int:
        """The training batches (optimizer steps) of an epoch of ``items`` items: a last one of one row is left out."""
        return items // self.batch_size + (1 if items % self.batch_size > 1 else 0)

    def __getitems__(self, items: Sequence[Any]) -> FeatureSteps:
        size = self.batch_size
        chunks = [items[s : s + size] for s in range(0, len(items), size)]
        if size > 1 and chunks and len(chunks[-1]) == 1:  # only an epoch's last chunk can be short
            chunks.pop()
        batches = [self.inner.__getitems__(chunk) for chunk in chunks]
        if not batches:
            empty = self.inner.__getitems__([])
            return FeatureSteps(empty.features, empty.targets, empty.indices, [], [])
        return FeatureSteps(
            torch.cat([b.features for b in batches]),
            torch.cat([b.targets for b in batches]),
            torch.cat([b.indices for b in batches]),
            [bad for b in batches for bad in b.bad],
            [len(b.targets) for b in batches],
        )


def entry_is_complete(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished entry for ``key`` (its metadata is written last)."""
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("complete") is True


def read_meta(folder: Path) -> dict[str, Any]:
    """The metadata of a finished entry."""
    return json.loads((folder / META_NAME).read_text())


def extract_shard(
    encode: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    size: int,
    out: Path,
    device: torch.device,
    context: Callable[[], AbstractContextManager],
    report: Callable[[int], None] | None = None,
) -> tuple[int, list[Any]]:
    """Run ``encode`` over ``loader`` (batches of the split's images) and write features and indices into ``out``.

    Returns the feature width and the unreadable files met. ``out`` gets ``features.npy`` (rows in loader order)
    and ``indices.npy`` (the dataset index of each row). ``report`` is called with the rows done after each batch.
    """
    out.mkdir(parents=True, exist_ok=True)
    features: np.memmap | None = None
    indices = np.full(size, -1, dtype=np.int64)
    row = 0
    bad: list[Any] = []
    with torch.inference_mode():
        for batch in loader:
            bad += list(batch.bad)
            if len(batch.targets) == 0:
                continue
            with context():
                encoded = encode(batch.images.to(device, non_blocking=True))
            values = encoded.float().cpu().numpy()
            if features is None:
                features = np.lib.format.open_memmap(
                    out / FEATURES_NAME, mode="w+", dtype=np.float32, shape=(size, values.shape[1])
                )
            features[row : row + len(values)] = values
            indices[row : row + len(values)] = batch.indices.numpy()
            row += len(values)
            if report is not None:
                report(row)
    width = 0 if features is None else features.shape[1]
    if features is not None:
        features.flush()
        del features
    np.save(out / INDICES_NAME, indices[:row])
    return width, bad


def assemble(parts: Sequence[Path], size: int, width: int, folder: Path) -> None:
    """Merge the shards' rows into one ``features.npy`` ordered by dataset index, plus the ``valid`` mask."""
    folder.mkdir(parents=True, exist_ok=True)
    features = np.lib.format.open_memmap(folder / FEATURES_NAME, mode="w+", dtype=np.float32, shape=(size, width))
    valid = np.zeros(size, dtype=bool)
    for part in parts:
        indices = np.load(part / INDICES_NAME)
        if len(indices) == 0:
            continue
        rows = np.load(part / FEATURES_NAME, mmap_mode="r")[: len(indices)]
        features[indices] = rows
        valid[indices] = True
    features.flush()
    del features
    np.save(folder / VALID_NAME, valid)


def publish(build: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write the metadata last, then move the finished entry into place in one rename."""
    (build / META_NAME).write_text(json.dumps({**meta, "complete": True, "written": time.time()}, indent=1))
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    os.replace(build, final)


def build_folder(root: Path, name: str) -> Path:
    """A fresh temporary folder beside the final entry (same file system, so the rename is atomic).

    It is created with the cache's marker file in it, which the entry keeps once published: ``clean-cache`` deletes
    only folders it can prove are the cache's own.
    """
    build = root / f".building-{name}-{uuid.uuid4().hex[:8]}"
    build.mkdir(parents=True)
    (build / MARKER_NAME).write_text(json.dumps(MARKER) + "\n")
    return build


def is_cache_marker(path: Path) -> bool:
    """Whether ``path`` is a well-formed marker file (a regular file, not a link, holding :data:`MARKER`)."""
    try:
        return not path.is_symlink() and path.is_file() and json.loads(path.read_text()) == MARKER
    except (OSError, ValueError):
        return False


def folder_size(folder: Path) -> int:
    """Bytes of the files in ``folder``."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
