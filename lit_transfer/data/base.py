"""Shared DataModule plumbing: datasets of files, reproducible loaders, bad-image policy, split manifest."""

from __future__ import annotations

import csv
import math
import os
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from lit_transfer.core.batches import BadSample, Batch, FeatureBatch, keep_batch
from lit_transfer.core.run_folder import run_dir
from lit_transfer.core.seeding import mix_seed
from lit_transfer.data.images import BadImageError, check_image_header, collect_unreadable, find_images, load_rgb
from lit_transfer.data.resumable import ResumableLoader, ResumeSampler
from lit_transfer.data.sampler import BalancedSampler
from lit_transfer.data.splits import Sample, group_by_split, manifest_hash, write_manifest
from lit_transfer.data.transforms import Transform, eval_transform, train_transform

MANIFEST_NAME = "split_manifest.csv"
BAD_IMAGES_NAME = "bad_images.csv"
BadImagePolicy = Literal["skip", "error"]


def default_num_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: the order is a permutation seeded by ``(seed, epoch)``, not by the global RNG.

    Passing the epoch with each index lets every sample seed its own augmentation from ``(seed, epoch, index)``, so
    an epoch draws the same images and the same augmentations whichever worker loads them and whether the run was
    resumed or not. Under distributed training every rank takes its share of the same order: training shards are
    padded to equal length (each rank must run the same number of steps), evaluation shards are not, so no image is
    counted twice in a metric.
    """

    def __init__(
        self, size: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0, pad: bool = True
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start, and by the data module when it builds a loader."""
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.num_replicas > 1 and self.pad and order:
            order += (order * self.num_replicas)[: (-len(order)) % self.num_replicas]
        return order[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.size
        if self.pad:
            return -(-self.size // self.num_replicas)
        return len(range(self.rank, self.size, self.num_replicas))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._order()])


class ImageFilesDataset(Dataset):
    """Images from a list of files; items are ``(uint8 CHW tensor, target, index)`` or a :class:`BadSample`.

    ``targets`` are class labels for training and evaluation, or the item's own index for prediction. Items are
    addressed by an index or by ``(index, epoch)`` (from :class:`EpochSampler`); random transforms then draw from a
    generator seeded by ``(seed, epoch, index)``. ``min_side`` lets large JPEGs decode at a reduced size whose
    shorter side is still at least that many pixels (see :func:`~lit_transfer.data.images.load_rgb`).
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: Transform,
        split: str = "train",
        bad_images: BadImagePolicy = "skip",
        seed: int = 0,
        min_side: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.split = split
        self.bad_images = bad_images
        self.seed = seed
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Any:
        """The decoded RGB image of item ``index``, or a :class:`BadSample` under the skip policy."""
        path = self.root / self.paths[index]
        try:
            return load_rgb(path, self.min_side)
        except Exception as err:  # a worker must not die on one file: name it and go on, or stop with its name
            if self.bad_images == "error":
                raise BadImageError(
                    f"cannot read image {str(path)!r} ({self.split} split): {err}. Fix or remove the file, or set "
                    "data.init_args.bad_images: skip"
                ) from err
            return BadSample(str(path), self.split, f"{type(err).__name__}: {err}")

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image = self.load(index)
        if isinstance(image, BadSample):
            return image
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator (~180 µs a call, measured)
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            tensor = self.transform(image)
        return tensor, self.targets[index], index


def collate_skipping_bad(items: list[Any]) -> Batch:
    """Stack the good items; carry the skipped files along so the main process can report them."""
    good = [item for item in items if not isinstance(item, BadSample)]
    bad = [item for item in items if isinstance(item, BadSample)]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), empty, empty, bad)
    return Batch(
        stack_shared([g[0] for g in good]),
        _shared(torch.tensor([g[1] for g in good], dtype=torch.long)),
        _shared(torch.tensor([g[2] for g in good], dtype=torch.long)),
        bad,
    )


def stack_shared(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; in a loader worker, straight into shared memory, as PyTorch's default collate does.

    A worker's batch travels to the training process through shared memory (``/dev/shm``). Left to the queue's
    background thread, a full ``/dev/shm`` fails there, unseen, and the training process waits forever for the
    batch; allocated here, the error reaches the training process and names shared memory.
    """
    if get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(sum(t.numel() for t in tensors), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def _shared(tensor: torch.Tensor) -> torch.Tensor:
    """In a loader worker, ``tensor`` moved to shared memory now, so a full ``/dev/shm`` fails here (see above)."""
    return tensor.share_memory_() if get_worker_info() is not None else tensor


class DatasetWrapper(Protocol):
    """A hook that may serve a split from something other than its image files.

    See :meth:`BaseImageDataModule.set_dataset_wrapper`; the FeatureCache callback's hook serves cached features.
    """

    def __call__(self, datamodule: BaseImageDataModule, split: str, dataset: Dataset) -> Dataset | None:
        """The dataset to load ``split`` from instead of ``dataset``, or ``None`` to load the images as usual."""
        ...


class BaseImageDataModule(pl.LightningDataModule):
    """Loaders, transforms, bad-image handling and manifest handling shared by every lit_transfer data module.

    Subclasses set ``class_names`` in ``__init__`` (so ``num_classes`` can flow to the model before training) and
    implement :meth:`build_samples`.

    Args:
        image_size: side of the square crops fed to the model.
        batch_size: images per batch (per device).
        num_workers: loader processes; ``None`` uses every core this process may use, shared among the training
            processes of a node.
        augmentation: train transform preset (``standard``, ``seed002``, ``none``).
        pin_memory: page-locked batches; ``None`` pins when a GPU is used.
        persistent_workers: keep loader processes alive between epochs.
        predict_dir: folder of images for ``predict`` (searched recursively).
        seed: seed of the split assignment, the shuffling and the augmentation.
        bad_images: ``skip`` unreadable images and list them in ``bad_images.csv``, or stop with an ``error``.
        max_bad_fraction: stop before training when more than this share of the images is unreadable.
        check_images: read every file's header at setup, so most bad files are known before training starts.
        loader_timeout: seconds to wait for a batch from a worker before failing (0 waits forever).
        sampler: ``random`` (shuffled) or ``balanced`` (every class drawn equally often, with replacement).
        normalize: ``model`` (the backbone weights' mean/std) or ``dataset`` (exact mean/std of the training split,
            stored in the checkpoint).
        decode_scale: large JPEGs are decoded at a reduced size (1/2, 1/4, 1/8, inside the decoder) whose shorter
            side is still at least ``decode_scale`` x ``image_size`` pixels; ``null`` always decodes in full.

    """

    def __init__(
        self,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int | None = None,
        augmentation: str = "standard",
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        predict_dir: str | None = None,
        seed: int = 42,
        bad_images: BadImagePolicy = "skip",
        max_bad_fraction: float = 0.05,
        check_images: bool = True,
        loader_timeout: float = 0.0,
        sampler: Literal["random", "balanced"] = "random",
        normalize: Literal["model", "dataset"] = "model",
        decode_scale: float | None = 2.0,
    ) -> None:
        super().__init__()
        train_transform(augmentation, image_size)  # fail on an unknown preset before anything runs
        if image_size < 8:
            raise ValueError(f"data.image_size={image_size} is too small; use at least 8 pixels")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be at least 1")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers}: use 0 (load in the main process) or more workers")
        if bad_images not in ("skip", "error"):
            raise ValueError(f"data.bad_images={bad_images!r}: use 'skip' or 'error'")
        if predict_dir is not None and not Path(predict_dir).is_dir():
            raise FileNotFoundError(f"data.predict_dir {predict_dir!r} does not exist or is not a directory")
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self._auto_workers = num_workers is None
        self.augmentation = augmentation
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_dir = predict_dir
        self.seed = seed
        self.bad_images = bad_images
        self.max_bad_fraction = max_bad_fraction
        self.check_images = check_images
        self.loader_timeout = loader_timeout
        if sampler not in ("random", "balanced"):
            raise ValueError(f"data.sampler={sampler!r}: use 'random' or 'balanced'")
        if normalize not in ("model", "dataset"):
            raise ValueError(f"data.normalize={normalize!r}: use 'model' or 'dataset'")
        if decode_scale is not None and decode_scale < 1.25:
            raise ValueError(
                f"data.decode_scale={decode_scale} would decode images smaller than the evaluation resize; use at "
                "least 1.25, or null to always decode in full"
            )
        self.sampler = sampler
        self.normalize = normalize
        self.decode_scale = decode_scale
        self.normalization: tuple[list[float], list[float]] | None = None
        self.class_names: list[str] = []
        self.samples: list[Sample] = []
        self.data_root: Path = Path(".")
        self.predict_paths: list[str] = []
        self.bad_found: list[BadSample] = []
        self._bad_while_running: set[str] = set()
        self._reported: set[str] = set()
        self._written_to: str | None = None
        self._synced = False
        self._predict_synced = False
        self._datasets: dict[str, ImageFilesDataset] = {}
        self._dataset_wrapper: DatasetWrapper | None = None  # see set_dataset_wrapper
        self._told_drop_last = False

    @property
    def num_classes(self) -> int:
        """Number of classes, known right after ``__init__``."""
        return len(self.class_names)

    def build_samples(self) -> tuple[Path, list[Sample]]:
        """Scan the data and return the folder the sample paths are relative to, and the samples of every split."""
        raise NotImplementedError

    @property
    def manifest_hash(self) -> str | None:
        """Hash of the split assignment, once :meth:`setup` has run."""
        return manifest_hash(self.samples, self.class_names) if self.samples else None

    def train_targets(self) -> list[int]:
        """The label of every training example, once :meth:`setup` has run (for inverse-frequency class weights).

        Data modules whose examples are not the samples themselves (RotNet's rotated views) override it.
        """
        return [s.label for s in self.samples if s.split == "train"]

    # --- setup ----------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Scan files, drop unreadable ones, and build the datasets the ``stage`` needs."""
        if stage == "predict":
            self._setup_predict()
        else:
            world = self.trainer.world_size if self.trainer is not None else 1
            if not self.samples or (world > 1 and not self._synced):
                # scanning, header checks and statistics happen once, on rank 0; the other ranks receive the result
                scan = None
                if self._is_rank_zero():
                    cached = (self.data_root, self.samples, self.bad_found, self.normalization)
                    scan = cached if self.samples else self._scan(stage)
                self.data_root, self.samples, self.bad_found, self.normalization = self._broadcast(scan)
                self._reported |= {b.path for b in self.bad_found}
                self._synced = world > 1
            self._build_datasets()
        self._write_run_files()

    def _scan(self, stage: str) -> tuple[Path, list[Sample], list[BadSample], Any]:
        with collect_unreadable() as unreadable:
            data_root, samples = self.build_samples()
        self.data_root = data_root
        self._report_unreadable_folders(unreadable)
        samples = self._screen(samples)
        by_split = group_by_split(samples)
        counts = ", ".join(f"{s} {len(by_split.get(s, []))}" for s in ("train", "val", "test"))
        rank_zero_info(f"{type(self).__name__}: {self.num_classes} classes; images: {counts}")
        normalization = self.normalization
        if stage == "fit" and self.normalize == "dataset" and normalization is None:
            normalization = self._dataset_statistics(samples)
        return data_root, samples, list(self.bad_found), normalization

    def _report_unreadable_folders(self, folders: list[tuple[str, str]]) -> None:
        """Folders the scan could not list: an error under ``bad_images: error``, else a warning and CSV rows."""
        new = [BadSample(path, "", reason) for path, reason in folders if path not in self._reported]
        if not new:
            return
        listing = "; ".join(f"{b.path} ({b.reason})" for b in new[:10]) + (" …" if len(new) > 10 else "")
        if self.bad_images == "error":
            raise BadImageError(
                f"{len(new)} folder(s) cannot be read, so their images would be left out: {listing}. Fix the "
                "permissions, or set data.init_args.bad_images: skip"
            )
        self.bad_found += new
        self._reported |= {b.path for b in new}
        rank_zero_warn(
            f"{len(new)} folder(s) cannot be read and their images are left out: {listing}; listed in "
            f"{BAD_IMAGES_NAME} in the run folder"
        )

    def _is_rank_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _broadcast(self, obj: Any) -> Any:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return obj
        return trainer.strategy.broadcast(obj, src=0)

    def _setup_predict(self) -> None:
        if not self.predict_dir:
            raise ValueError("predict needs a folder of images: pass --data.init_args.predict_dir DIR")
        world = self.trainer.world_size if self.trainer is not None else 1
        if not self.predict_paths or (world > 1 and not self._predict_synced):
            paths = None
            if self._is_rank_zero():
                paths = self.predict_paths or self._scan_predict_dir()
            self.predict_paths = self._broadcast(paths)
            self._predict_synced = world > 1
        self._datasets["predict"] = self.make_dataset(
            self.predict_dir, self.predict_paths, list(range(len(self.predict_paths))), "predict"
        )

    def _scan_predict_dir(self) -> list[str]:
        with collect_unreadable() as unreadable:
            found = find_images(self.predict_dir)  # type: ignore[arg-type]
        self._report_unreadable_folders(unreadable)
        if not found:
            raise ValueError(f"data.predict_dir {self.predict_dir!r} holds no image files")
        samples = [Sample(p, i, "predict") for i, p in enumerate(found)]
        return [s.path for s in self._screen(samples, root=Path(self.predict_dir))]  # type: ignore[arg-type]

    def _screen(self, samples: list[Sample], root: Path | None = None) -> list[Sample]:
        """Drop files whose header is unreadable, report them, and stop when too many are bad."""
        if not self.check_images:
            return samples
        root = self.data_root if root is None else root
        good, bad = [], []
        for sample in samples:
            reason = check_image_header(root / sample.path)
            if reason is None:
                good.append(sample)
            else:
                bad.append(BadSample(str(root / sample.path), sample.split, reason))
        if not bad:
            return samples
        listing = "; ".join(f"{b.path} ({b.reason})" for b in bad[:10]) + (" …" if len(bad) > 10 else "")
        if self.bad_images == "error":
            raise BadImageError(
                f"{len(bad)} unreadable image(s): {listing}. Fix or remove them, or set data.init_args.bad_images: skip"
            )
        fraction = len(bad) / len(samples)
        if fraction > self.max_bad_fraction:
            raise BadImageError(
                f"{len(bad)} of {len(samples)} images ({fraction:.1%}) are unreadable, more than "
                f"data.init_args.max_bad_fraction={self.max_bad_fraction}: {listing}"
            )
        self.bad_found += bad
        self._reported |= {b.path for b in bad}
        rank_zero_warn(f"skipping {len(bad)} unreadable image(s), listed in {BAD_IMAGES_NAME} in the run folder")
        return good

    def make_dataset(self, root: str | Path, paths: Sequence[str], targets: Sequence[int], split: str) -> Dataset:
        """The dataset of one split: the train transform for ``train``, the evaluation transform otherwise."""
        if split == "train":
            transform = train_transform(self.augmentation, self.image_size)
        else:
            transform = eval_transform(self.image_size)
        return ImageFilesDataset(
            root, paths, targets, transform, split, self.bad_images, self.seed, self.decode_min_side(self.image_size)
        )

    def decode_min_side(self, size: int) -> int | None:
        """The shorter side large JPEGs may be decoded down to, for crops of ``size`` pixels (``decode_scale``)."""
        return None if self.decode_scale is None else math.ceil(self.decode_scale * size)

    def _build_datasets(self) -> None:
        by_split = group_by_split(self.samples)
        for split in ("train", "val", "test"):
            items = by_split.get(split, [])
            self._datasets[split] = self.make_dataset(
                self.data_root, [s.path for s in items], [s.label for s in items], split
            )

    def _dataset_statistics(self, samples: list[Sample]) -> tuple[list[float], list[float]]:
        """Exact mean/std of the training split's pixels after the evaluation resize and crop."""
        from lit_transfer.data.stats import compute_channel_stats  # the data card imports this module

        train = [s for s in samples if s.split == "train"]
        dataset = self.make_dataset(self.data_root, [s.path for s in train], [s.label for s in train], "val")
        mean, std = compute_channel_stats(dataset, num_workers=self.num_workers)
        rank_zero_info(f"training split mean {[round(m, 4) for m in mean]}, std {[round(v, 4) for v in std]}")
        return mean, std

    def image_of(self, split: str, index: int) -> torch.Tensor | None:
        """Item ``index`` of ``split`` as the evaluation transform shows it (``uint8`` CHW), or ``None``."""
        dataset = self._datasets.get(split)
        if not isinstance(dataset, ImageFilesDataset):
            return None
        image = dataset.load(index)
        return None if isinstance(image, BadSample) else eval_transform(self.image_size)(image)

    def paths_of(self, split: str, indices: Sequence[int]) -> list[str]:
        """File paths of dataset items, for messages that must name files."""
        dataset = self._datasets.get(split)
        root = getattr(dataset, "root", Path("."))
        return [str(root / dataset.paths[i]) for i in indices] if dataset is not None else []

    # --- run folder -----------------------------------------------------------------------------------------------

    def _run_dir(self) -> Path | None:
        return run_dir(self.trainer)

    def _write_run_files(self) -> None:
        if not self._is_rank_zero():
            return
        run_dir = self._run_dir()
        if run_dir is None or self._written_to == str(run_dir):
            return
        self._written_to = str(run_dir)
        if self.samples:
            write_manifest(run_dir / MANIFEST_NAME, self.samples, self.class_names)
        self._write_bad(self.bad_found, fresh=True)

    def _write_bad(self, bad: list[BadSample], fresh: bool = False) -> None:
        run_dir = self._run_dir()
        if run_dir is None or not bad:
            return
        path = run_dir / BAD_IMAGES_NAME
        run_dir.mkdir(parents=True, exist_ok=True)
        new_file = fresh or not path.exists()
        with open(path, "w" if fresh else "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["path", "split", "reason"])
            writer.writerows(bad)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Report files that failed to decode in a worker (once each), in the main process."""
        if isinstance(batch, Batch | FeatureBatch) and batch.bad:
            new = [b for b in batch.bad if b.path not in self._reported]
            if new:
                self._reported |= {b.path for b in new}
                self.bad_found += new
                if self._is_rank_zero():  # other ranks warn; rank 0 keeps the file
                    self._write_bad(new)
                rank_zero_warn(
                    f"skipped {len(new)} image(s) that failed to decode ({new[0].path}: {new[0].reason}); "
                    f"{len(self.bad_found)} in {BAD_IMAGES_NAME} so far"
                )
                self._check_bad_during_run(new)
        return batch

    def _check_bad_during_run(self, new: list[BadSample]) -> None:
        """Stop when more than ``max_bad_fraction`` of the images became unreadable while running.

        Files deleted or a disk unmounted mid-run: training on what is left would end with exit status 0 and a
        meaningless model. Counted as at setup, over every image of the data set (of this process's share).
        """
        self._bad_while_running |= {b.path for b in new}
        world, _ = self._world()
        total = sum(len(d) for d in self._datasets.values() if d is not None)  # type: ignore[arg-type]
        share = total / world
        if share and len(self._bad_while_running) > self.max_bad_fraction * share:
            example = new[-1]
            raise BadImageError(
                f"{len(self._bad_while_running)} of the {total} images (this process's share: {share:g}) could not "
                f"be read during the run, more than data.init_args.max_bad_fraction={self.max_bad_fraction}; e.g. "
                f"{example.path}: {example.reason}. The data changed or became unreadable while training: restore it "
                f"and resume with --ckpt_path last (each file is listed in {BAD_IMAGES_NAME})"
            )

    # --- checkpoint state: the split manifest ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The split assignment, stored in checkpoints so resume and test use the same splits.

        Plain lists, never strings joined with separators, so any character of a file or class name survives, and
        the checkpoint still loads with ``torch.load(weights_only=True)``.
        """
        if not self.samples:
            return {}
        manifest = {
            "paths": [s.path for s in self.samples],
            "labels": [s.label for s in self.samples],
            "splits": [s.split for s in self.samples],
        }
        return {"class_names": list(self.class_names), "manifest": manifest}

    def _saved_samples(self, state: dict[str, Any]) -> list[Sample]:
        manifest = state["manifest"]
        if isinstance(manifest, dict):
            columns = zip(manifest["paths"], manifest["labels"], manifest["splits"], strict=True)
            return [Sample(path, int(label), split) for path, label, split in columns]
        # checkpoints written before the list format: "split\tclass\tpath" rows joined by newlines
        index = {name: i for i, name in enumerate(self.class_names)}
        saved = []
        for row in manifest.split("\n"):
            split, name, path = row.split("\t", 2)
            saved.append(Sample(path, index[name], split))
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reuse a checkpoint's split assignment, after checking the files on disk are the same.

        Paths compare in Unicode NFC form: files renamed from NFD (macOS) to NFC (Linux) are the same files, and keep
        the checkpoint's splits under the names they have on disk now.
        """
        if not state or "manifest" not in state:
            return
        if not self.samples:
            self.samples = self._saved_samples(state)
            self._build_datasets()
            return
        self.samples = self.resumed_samples(state)
        self._build_datasets()
        self._written_to = None
        self._write_run_files()

    def resumed_samples(self, state: dict[str, Any], warn: bool = True) -> list[Sample]:
        """The checkpoint's split assignment under the names the files have on disk now.

        Raises ``ValueError`` when the classes or the files differ from the checkpoint's: the CLI calls this before
        training, so a refused resume rewrites none of the run's files.
        """
        if list(state["class_names"]) != self.class_names:
            raise ValueError(
                f"the checkpoint's classes {state['class_names']} differ from the data's {self.class_names}"
            )
        saved = self._saved_samples(state)

        # two files whose names differ only in Unicode form are compared as they are
        nfc = len({(unicodedata.normalize("NFC", s.path), s.label) for s in self.samples}) == len(self.samples)

        def key(path: str) -> str:
            return unicodedata.normalize("NFC", path) if nfc else path

        on_disk = {(key(s.path), s.label): s.path for s in self.samples}
        before = {(key(s.path), s.label) for s in saved}
        if on_disk.keys() != before:
            added = sorted(p for p, _ in on_disk.keys() - before)
            removed = sorted(p for p, _ in before - on_disk.keys())
            raise ValueError(
                f"the data changed since the checkpoint was written: {len(added)} file(s) added {added[:5]}, "
                f"{len(removed)} removed or relabelled {removed[:5]}. Restore the files or start a new run"
            )
        if warn and {(key(s.path), s.split) for s in self.samples} != {(key(s.path), s.split) for s in saved}:
            rank_zero_warn("the split settings changed since the checkpoint; keeping the checkpoint's splits")
        return [Sample(on_disk[(key(s.path), s.label)], s.label, s.split) for s in saved]

    # --- loaders --------------------------------------------------------------------------------------------------

    @property
    def dataset_wrapper(self) -> DatasetWrapper | None:
        """The hook registered with :meth:`set_dataset_wrapper`, or ``None``."""
        return self._dataset_wrapper

    def set_dataset_wrapper(self, wrapper: DatasetWrapper | None) -> None:
        """Register the hook the loaders ask for a replacement of a split's dataset; ``None`` removes it.

        Every loader built while a hook is registered calls ``wrapper(self, split, dataset)``. A dataset it returns
        is loaded instead of ``dataset`` with the same sampler, batch size and ``drop_last``, so the batches are the
        same and in the same order; it is read in the main process, and its items are whole batches (built by its
        ``__getitems__``, as :class:`~lit_transfer.features.FeatureDataset` does) that
        :func:`~lit_transfer.core.batches.keep_batch` passes through. ``None`` keeps the image loader. One hook at a
        time: the FeatureCache callback registers one in ``setup`` and removes it in ``teardown``.
        """
        self._dataset_wrapper = wrapper

    def _loader(self, split: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        dataset = self._datasets.get(split)
        if dataset is None or len(dataset) == 0:
            raise ValueError(
                f"the {split} split is empty: give it images (a {split} folder or a positive {split}_fraction)"
            )
        pin = self.pin_memory
        if pin is None:
            pin = bool(self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
        workers = self.loader_workers()
        world, rank = self._world()
        if sampler is None:
            sampler = EpochSampler(len(dataset), shuffle, self.seed, world, rank, pad=split == "train")
        set_epoch = getattr(sampler, "set_epoch", None)
        if set_epoch is not None:
            # Lightning creates a new loader's iterator before it calls set_epoch, and loader workers draw their first
            # indices from the sampler right then: left at epoch 0, the first epoch of a resumed run would replay
            # epoch 0's order and augmentations (the issue-12 resume mismatch with workers)
            set_epoch(self.loader_epoch())
        # A last training batch of one image cannot train BatchNorm ("Expected more than 1 value per channel"), and
        # would weigh one image as much as a whole batch: leave it out of that epoch (shuffling varies which image).
        per_process = len(sampler)  # type: ignore[arg-type]
        drop_last = split == "train" and self.batch_size > 1 and per_process % self.batch_size == 1
        if drop_last and not self._told_drop_last:
            self._told_drop_last = True
            rank_zero_info(
                f"each training epoch leaves out its last batch, which would hold a single image ({per_process} "
                f"images per process, batch_size {self.batch_size})"
            )
        loader: Any = DataLoader
        options: dict[str, Any] = {}
        if split == "train":  # resumes mid-epoch at the batch where an interrupted.ckpt stopped
            loader, sampler, options = ResumableLoader, ResumeSampler(sampler), {"progress": self._epoch_batches_done}
        wrapper = self._dataset_wrapper
        cached = wrapper(self, split, dataset) if wrapper is not None else None
        if cached is not None:
            # the same sampler over the cached features: the same batches as the image loader, without decoding
            return loader(
                cached,
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=0,
                collate_fn=keep_batch,
                drop_last=drop_last,
                pin_memory=pin,
                generator=torch.Generator().manual_seed(self.seed),
                **options,
            )
        return loader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_skipping_bad,
            drop_last=drop_last,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and workers > 0,
            timeout=self.loader_timeout if workers > 0 else 0,
            generator=torch.Generator().manual_seed(self.seed),
            **options,
        )

    def _epoch_batches_done(self) -> int:
        """Batches of the current epoch the training loop has finished (what a mid-epoch checkpoint has trained)."""
        trainer = self.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def loader_workers(self) -> int:
        """Loader processes per training process: ``num_workers``, or this process's share of the cores by default."""
        trainer = self.trainer
        if self._auto_workers and trainer is not None and trainer.num_devices > 1:
            return max(1, self.num_workers // trainer.num_devices)  # the processes of a node share its cores
        return self.num_workers

    def loader_epoch(self) -> int:
        """The epoch a loader built now first iterates: the value Lightning passes to ``set_epoch`` next."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_progress.current.processed

    def _world(self) -> tuple[int, int]:
        """(number of processes, this process's rank); the data module shards loaders itself (see EpochSampler)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches; class-balanced draws with ``sampler: balanced``."""
        dataset = self._datasets.get("train")
        if self.sampler != "balanced" or dataset is None or len(dataset) == 0:
            return self._loader("train", shuffle=True)
        # the same global draw on every rank for an epoch, then each rank takes its shard
        world, rank = self._world()
        balanced = BalancedSampler(
            dataset.targets,  # type: ignore[attr-defined]
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            item_keys=True,
        )
        return self._loader("train", shuffle=True, sampler=balanced)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in manifest order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in manifest order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_dir`` images; targets are indices into :attr:`predict_paths`."""
        return self._loader("predict", shuffle=False)
