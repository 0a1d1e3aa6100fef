"""BaseImageDataModule: the data module every lit_transfer data module builds on, tying its parts together.

Its parts live in their own modules: the checks of its settings (:mod:`~lit_transfer.data.settings`), the sampler
(:mod:`~lit_transfer.data.epoch_sampler`), the dataset of files (:mod:`~lit_transfer.data.dataset`), the collate
functions (:mod:`~lit_transfer.data.collate`), bad-image screening (:mod:`~lit_transfer.data.screening`), the run
files (:mod:`~lit_transfer.data.run_files`), the checkpoint state (:mod:`~lit_transfer.data.manifest_state`), the
ranks (:mod:`~lit_transfer.data.distributed`), setup's scan (:mod:`~lit_transfer.data.scan`) and the loaders
(:mod:`~lit_transfer.data.loaders`). The names other code imports from here stay importable from here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_transfer.core.batches import BadSample as BadSample  # re-exported
from lit_transfer.core.batches import Batch, FeatureBatch, FeatureSteps
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.core.run_folder import run_dir
from lit_transfer.core.seeding import mix_seed as mix_seed  # re-exported
from lit_transfer.core.tta import TTA
from lit_transfer.data import distributed, loaders, manifest_state, run_files, scan, screening
from lit_transfer.data.collate import collate_skipping_bad as collate_skipping_bad  # re-exported
from lit_transfer.data.collate import stack_shared as stack_shared  # re-exported
from lit_transfer.data.dataset import BadImagePolicy, ImageFilesDataset
from lit_transfer.data.epoch_sampler import EpochSampler
from lit_transfer.data.loaders import default_num_workers
from lit_transfer.data.run_files import BAD_IMAGES_NAME as BAD_IMAGES_NAME  # re-exported
from lit_transfer.data.run_files import MANIFEST_NAME as MANIFEST_NAME  # re-exported
from lit_transfer.data.sampler import BalancedSampler
from lit_transfer.data.settings import check_settings
from lit_transfer.data.splits import Sample, manifest_hash
from lit_transfer.data.transforms import eval_transform, train_transform
from lit_transfer.data.tta import check_tta

DEFAULT_IMAGE_SIZE = 224  # without weights that say otherwise


def resolve_data_preprocessing(
    image_size: int | None, preprocessing: Preprocessing | dict[str, Any] | None
) -> Preprocessing:
    """The data module's preprocessing: the one given (its size must agree with ``image_size``), else the default.

    Raises:
        ValueError: ``image_size`` and ``preprocessing.input_size`` disagree, or a bad ``preprocessing`` mapping.
    """
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None:
        return Preprocessing.default(DEFAULT_IMAGE_SIZE if image_size is None else image_size)
    if image_size is not None and image_size != preprocessing.input_size:
        raise ValueError(
            f"data.image_size={image_size} and data.preprocessing.input_size={preprocessing.input_size} disagree; "
            "give one of them (image_size alone keeps the weights' resize ratio and interpolation)"
        )
    return preprocessing


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
        image_size: side of the square crops fed to the model; ``null`` takes the size the backbone's weights were
            trained at (the CLI resolves it from ``model.backbone`` and ``model.weights``), else 224.
        batch_size: images per batch (per device).
        num_workers: loader processes; ``None`` uses every core this process may use, shared among the training
            processes of a node.
        augmentation: train transform preset (``standard``, ``seed002``, ``trivialaugment``, ``randaugment``,
            ``autoaugment``, ``random_erasing``, ``none``).
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
        preprocessing: the evaluation resize, crop and interpolation (and the train crop's size and interpolation):
            ``input_size``, ``resize_size`` or ``crop_pct``, ``interpolation``, ``crop_mode``, ``mean``, ``std``.
            The CLI fills it in from the backbone's weights (their own metadata, e.g. EfficientNet-B0: resize 256,
            crop 224, bicubic) unless the config gives it; ``null`` outside the CLI means lit_transfer's defaults
            (resize to ``image_size / 0.875``, bilinear, center crop).
        tta: test-time augmentation of the ``val``, ``test`` and ``predict`` splits: ``none``, ``flip`` (the image and
            its mirror), ``five_crop`` (four corners and the centre of the resized image) or ``ten_crop`` (those and
            their mirrors); the model averages the views' softmax probabilities. Training batches are never TTA'd;
            ``fit``'s validation uses it too, at V times the cost.

    """

    def __init__(
        self,
        image_size: int | None = None,
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
        preprocessing: dict[str, Any] | Preprocessing | None = None,
        tta: TTA = "none",
    ) -> None:
        super().__init__()
        self.preprocessing = resolve_data_preprocessing(image_size, preprocessing)
        self.image_size = self.preprocessing.input_size
        check_tta(tta, self.preprocessing)
        check_settings(
            self.image_size,
            batch_size,
            num_workers,
            augmentation,
            bad_images,
            predict_dir,
            sampler,
            normalize,
            decode_scale,
        )
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
        self.sampler = sampler
        self.normalize = normalize
        self.decode_scale = decode_scale
        self.tta = tta
        self.normalization: tuple[list[float], list[float]] | None = None
        self.class_names: list[str] = []
        self.samples: list[Sample] = []
        self.data_root: Path = Path(".")
        self.predict_paths: list[str] = []
        self.bad_found: list[BadSample] = []
        self._bad_while_running: set[str] = set()
        self._last_bad: BadSample | None = None
        self._reported: set[str] = set()
        self._written_to: str | None = None
        self._synced = False
        self._predict_synced = False
        self._datasets: dict[str, Any] = {}  # split → ImageFilesDataset, or a subclass's own (RotationDataset)
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
                shared = None
                if self._is_rank_zero():
                    cached = (self.data_root, self.samples, self.bad_found, self.normalization)
                    shared = cached if self.samples else self._scan(stage)
                self.data_root, self.samples, self.bad_found, self.normalization = self._broadcast(shared)
                self._reported |= {b.path for b in self.bad_found}
                self._synced = world > 1
            self._build_datasets()
        self._write_run_files()

    def _scan(self, stage: str) -> tuple[Path, list[Sample], list[BadSample], Any]:
        rules = self._bad_image_rules()
        self.data_root, samples = scan.scan_samples(self.build_samples, rules, self._reported, self._remember_bad)
        scan.report_counts(type(self).__name__, self.num_classes, samples)
        normalization = self.normalization
        if stage == "fit" and self.normalize == "dataset" and normalization is None:
            normalization = scan.dataset_statistics(self.data_root, samples, self.make_dataset, self.num_workers)
        return self.data_root, samples, list(self.bad_found), normalization

    def _bad_image_rules(self) -> scan.BadImageRules:
        return scan.BadImageRules(self.bad_images, self.check_images, self.max_bad_fraction)

    def _remember_bad(self, bad: list[BadSample]) -> None:
        """Files (or folders) found unreadable at setup: listed in ``bad_images.csv``, never reported again."""
        self.bad_found += bad
        self._reported |= {b.path for b in bad}

    def _is_rank_zero(self) -> bool:
        return distributed.is_rank_zero(self.trainer)

    def _broadcast(self, obj: Any) -> Any:
        return distributed.broadcast(self.trainer, obj)

    def _setup_predict(self) -> None:
        if not self.predict_dir:
            raise ValueError("predict needs a folder of images: pass --data.init_args.predict_dir DIR")
        world = self.trainer.world_size if self.trainer is not None else 1
        if not self.predict_paths or (world > 1 and not self._predict_synced):
            paths = None
            if self._is_rank_zero():
                rules = self._bad_image_rules()
                paths = self.predict_paths or scan.scan_predict_dir(
                    self.predict_dir, rules, self._reported, self._remember_bad
                )
            self.predict_paths = self._broadcast(paths)
            self._predict_synced = world > 1
        self._datasets["predict"] = self.with_tta(
            "predict",
            self.make_dataset(self.predict_dir, self.predict_paths, list(range(len(self.predict_paths))), "predict"),
        )

    def make_dataset(self, root: str | Path, paths: Sequence[str], targets: Sequence[int], split: str) -> Dataset:
        """The dataset of one split: the train transform for ``train``, the evaluation transform otherwise."""
        if split == "train":
            transform = train_transform(self.augmentation, self.preprocessing)
        else:
            transform = eval_transform(self.preprocessing)
        min_side = self.decode_min_side(self.image_size)
        if min_side is not None:  # never decode below the evaluation resize (a crop_pct far below 1)
            min_side = max(min_side, self.preprocessing.resize_size)
        return ImageFilesDataset(root, paths, targets, transform, split, self.bad_images, self.seed, min_side)

    def decode_min_side(self, size: int) -> int | None:
        """The shorter side large JPEGs may be decoded down to, for crops of ``size`` pixels (``decode_scale``)."""
        return None if self.decode_scale is None else math.ceil(self.decode_scale * size)

    def _build_datasets(self) -> None:
        datasets = scan.split_datasets(self.data_root, self.samples, self.make_dataset)
        self._datasets.update({split: self.with_tta(split, dataset) for split, dataset in datasets.items()})

    def with_tta(self, split: str, dataset: Dataset) -> Dataset:
        """``dataset``, or for an evaluation split under ``tta`` a copy whose transform makes the TTA views.

        :meth:`make_dataset` stays single-view (the ``normalize: dataset`` statistics and the data card measure
        its evaluation view); only the loaders' datasets get the views.

        Raises:
            ValueError: ``tta`` is on and the split's items do not come from the evaluation transform.
        """
        if self.tta == "none" or split == "train":
            return dataset
        single = repr(eval_transform(self.preprocessing))  # a subclass's own evaluation transform is not replaced
        if type(dataset) is not ImageFilesDataset or repr(dataset.transform) != single:
            raise ValueError(
                f"data.init_args.tta={self.tta}: {type(self).__name__}'s {split} items do not come from "
                "lit_transfer's evaluation transform, so it cannot make their views; use tta: none"
            )
        views = copy.copy(dataset)
        views.transform = eval_transform(self.preprocessing, self.tta)
        return views

    def image_of(self, split: str, index: int) -> torch.Tensor | None:
        """Item ``index`` of ``split`` as the evaluation transform shows it (``uint8`` CHW), or ``None``."""
        dataset = self._datasets.get(split)
        if not isinstance(dataset, ImageFilesDataset):
            return None
        image = dataset.load(index)
        return None if isinstance(image, BadSample) else eval_transform(self.preprocessing)(image)

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
        folder = self._run_dir()
        if folder is None or self._written_to == str(folder):
            return
        self._written_to = str(folder)
        run_files.write_run_files(folder, self.samples, self.class_names, self.bad_found)

    def _write_bad(self, bad: list[BadSample], fresh: bool = False) -> None:
        run_files.write_bad(self._run_dir(), bad, fresh)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Report files that failed to decode in a worker (once each), in the main process."""
        if isinstance(batch, Batch | FeatureBatch | FeatureSteps) and batch.bad:
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
                self._bad_while_running |= {b.path for b in new}
                self._last_bad = new[-1]
        return batch

    def unreadable_while_running(self) -> int:
        """Files this process's loaders could not read during the run (setup's screening not counted)."""
        return len(self._bad_while_running)

    def check_unreadable(self, count: int) -> None:
        """Stop when ``count`` files (of every process) became unreadable during the run.

        Above ``max_bad_fraction`` of the data set; called by the ``UnreadableDataCheck`` callback (see screening).
        """
        total = sum(len(d) for d in self._datasets.values() if d is not None)
        screening.check_bad_during_run(count, total, self.max_bad_fraction, self._last_bad)

    # --- checkpoint state: the split manifest ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The split assignment, stored in checkpoints so resume and test use the same splits (see manifest_state)."""
        return manifest_state.manifest_state(self.samples, self.class_names)

    def _saved_samples(self, state: dict[str, Any]) -> list[Sample]:
        return manifest_state.saved_samples(state, self.class_names)

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
        return manifest_state.resumed_samples(state, self.samples, self.class_names, warn)

    # --- loaders --------------------------------------------------------------------------------------------------

    def split_dataset(self, split: str) -> Any:
        """The dataset of ``split`` after ``setup`` (``None`` when the split has none)."""
        return self._datasets.get(split)

    @property
    def dataset_wrapper(self) -> DatasetWrapper | None:
        """The hook registered with :meth:`set_dataset_wrapper`, or ``None``."""
        return self._dataset_wrapper

    def set_dataset_wrapper(self, wrapper: DatasetWrapper | None) -> None:
        """Register the hook the loaders ask for a replacement of a split's dataset; ``None`` removes it.

        Every loader built while a hook is registered calls ``wrapper(self, split, dataset)``. A dataset it returns
        is loaded instead of ``dataset`` with the same sampler, batch size and ``drop_last``, so the batches are the
        same and in the same order (a dataset with ``steps_per_batch`` K is drawn K batches at a time and cuts them
        itself, :class:`~lit_transfer.features.FusedFeatureDataset`); it is read in the main process, and its items
        are whole batches (built by its ``__getitems__``, as :class:`~lit_transfer.features.FeatureDataset` does) that
        :func:`~lit_transfer.core.batches.keep_batch` passes through. ``None`` keeps the image loader. One hook at a
        time: the FeatureCache callback registers one in ``setup`` and removes it in ``teardown``.
        """
        self._dataset_wrapper = wrapper

    def _loader(self, split: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        dataset = loaders.non_empty(split, self._datasets.get(split))
        world, rank = self._world()
        if sampler is None:
            sampler = EpochSampler(len(dataset), shuffle, self.seed, world, rank, pad=split == "train")
        loaders.start_at_epoch(sampler, self.loader_epoch())
        per_process = len(sampler)  # type: ignore[arg-type]
        drop_last = loaders.drops_single_image_batch(split, self.batch_size, per_process)
        if drop_last and not self._told_drop_last:
            self._told_drop_last = True
            loaders.tell_drop_last(per_process, self.batch_size)
        wrapper = self._dataset_wrapper
        cached = wrapper(self, split, dataset) if wrapper is not None else None
        return loaders.build_loader(
            dataset,
            split,
            sampler,
            batch_size=self.batch_size,
            drop_last=drop_last,
            pin_memory=loaders.pin_memory_for(self.trainer, self.pin_memory),
            num_workers=self.loader_workers(),
            persistent_workers=self.persistent_workers,
            timeout=self.loader_timeout,
            seed=self.seed,
            progress=self._epoch_batches_done,
            cached=cached,
        )

    def _epoch_batches_done(self) -> int:
        """Batches of the current epoch the training loop has finished (what a mid-epoch checkpoint has trained)."""
        return loaders.epoch_batches_done(self.trainer)

    def loader_workers(self) -> int:
        """Loader processes per training process: ``num_workers``, or this process's share of the cores by default."""
        return loaders.loader_workers(self.trainer, self.num_workers, self._auto_workers)

    def loader_epoch(self) -> int:
        """The epoch a loader built now first iterates: the value Lightning passes to ``set_epoch`` next."""
        return loaders.loader_epoch(self.trainer)

    def _world(self) -> tuple[int, int]:
        """(number of processes, this process's rank); the data module shards loaders itself (see EpochSampler)."""
        return distributed.world_of(self.trainer)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches; class-balanced draws with ``sampler: balanced``."""
        dataset = self._datasets.get("train")
        if self.sampler != "balanced" or dataset is None or len(dataset) == 0:
            return self._loader("train", shuffle=True)
        # the same global draw on every rank for an epoch, then each rank takes its shard
        world, rank = self._world()
        balanced = BalancedSampler(
            dataset.targets,
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
