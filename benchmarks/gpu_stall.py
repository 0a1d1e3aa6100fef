"""GPU benchmark section ``stall``: ours fed by the real JPEG loader (PIL, or GPU decoding) ÷ synthetic batches."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from gpu_common import (
    GOAL_STALL,
    LOADER_TIMEOUT_S,
    Setup,
    StepTimer,
    _cmd,
    bare_trainer,
    fit_quiet,
    interleaved,
    rate_rows,
    ratio_rows,
    temp_dir,
)
from gpu_models import (
    ours_model,
    ours_synthetic,
)
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from lit_transfer.data import ImageFolderDataModule
from lit_transfer.data.base import EpochSampler

# --- 4. data stall ---------------------------------------------------------------------------------------------------


def make_photo_jpegs(folder: Path, classes: int, total: int, unique: int, width: int, height: int) -> int:
    """``total`` photo-like JPEGs in ``classes`` class folders: ``unique`` distinct files, hard-linked to ``total``.

    Content is smooth (low-resolution random colour fields, upscaled bicubically, with a gradient), saved at quality
    90, so decoding costs what a photo of that size costs. Repeating files only saves generating them: the decoder
    does the same work for every copy (and the OS page cache serves them, as it serves a data set that fits in RAM).
    Returns the number of distinct files.
    """
    rng = np.random.default_rng(0)
    pool = folder / ".unique"  # a hidden folder: never a class
    pool.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    sources = []
    for i in range(min(unique, total)):
        small = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
        img = np.clip(img * 0.8 + ramp, 0, 255).astype(np.uint8)
        path = pool / f"u{i:05d}.jpg"
        Image.fromarray(img, "RGB").save(path, quality=90)
        sources.append(path)
    for c in range(classes):
        (folder / f"c{c:04d}").mkdir(exist_ok=True)
    for i in range(total):
        target = folder / f"c{i % classes:04d}" / f"img_{i:07d}.jpg"
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:  # a file system without hard links
            shutil.copyfile(sources[i % len(sources)], target)
    return len(sources)


class JpegBytesDataset(Dataset):
    """Items ``(uint8 1-D tensor of the file's bytes, label)``: the GPU-decode loader's workers only read files."""

    def __init__(self, root: Path, paths: Sequence[str], targets: Sequence[int]) -> None:
        self.root, self.paths, self.targets = Path(root), list(paths), list(targets)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index = item[0] if isinstance(item, tuple) else item
        return torchvision.io.read_file(str(self.root / self.paths[index])), self.targets[index]


def collate_bytes(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's encoded files as one flat uint8 tensor, their lengths, and the labels.

    One tensor per batch, not one per file: each tensor a worker returns travels through its own shared-memory
    file descriptor, and a list of 256 small tensors per batch failed here with ``OSError: [Errno 9] Bad file
    descriptor`` in ``resource_sharer`` (and would keep thousands of descriptors in flight with 16 workers).
    """
    files = [i[0] for i in items]
    lengths = torch.tensor([len(f) for f in files], dtype=torch.long)
    return torch.cat(files), lengths, torch.tensor([i[1] for i in items], dtype=torch.long)


def random_resized_crop_flip(image: torch.Tensor, size: int) -> torch.Tensor:
    """The ``standard`` augmentation on a decoded (device) uint8 CHW image: RandomResizedCrop + horizontal flip.

    Crop parameters are drawn on the CPU (no device sync); the crop, antialiased resize and flip run where the image
    is (torchvision resizes uint8 CUDA images through float32).
    """
    top, left, height, width = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
    out = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    return TF.horizontal_flip(out) if torch.rand(1).item() < 0.5 else out


class GpuDecodeDataModule(ImageFolderDataModule):
    """``ImageFolderDataModule`` whose workers only read JPEG bytes; the main process decodes on the training device.

    ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes the whole batch with nvJPEG, then every image is
    cropped, resized and flipped on the GPU. Runs in ``on_before_batch_transfer`` (main process, before Lightning's
    device transfer, which is then a no-op for the images). The base class's loader cannot be reused: its
    ``collate_fn`` is fixed and stacks equal-size images.
    """

    def make_dataset(self, root: str | Path, paths: Sequence[str], targets: Sequence[int], split: str) -> Dataset:
        """Byte-reading dataset for ``train``; the base class's datasets otherwise."""
        if split != "train":
            return super().make_dataset(root, paths, targets, split)
        return JpegBytesDataset(Path(root), paths, targets)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of encoded files, loaded as the base class loads them (sampler, workers, pinning)."""
        dataset = self._datasets["train"]
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), True, self.seed),
            num_workers=self.num_workers,
            collate_fn=collate_bytes,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            timeout=self.loader_timeout if self.num_workers > 0 else 0,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Decode and augment the batch on the training device (on a side CUDA stream)."""
        flat, lengths, targets = batch
        files = list(torch.split(flat, lengths.tolist()))  # contiguous 1-D CPU views, as decode_jpeg wants
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return self._decode(files, device), targets
        # The side stream lets decoding overlap the previous step still queued on the training stream, and keeps
        # the decoder away from memory that stream still uses: nvJPEG writes its outputs from a private stream
        # that does not wait for the caller's stream (pytorch/vision#9606), so on the training stream it could
        # overwrite freed activations that queued kernels have yet to read.
        main = torch.cuda.current_stream(device)
        stream = getattr(self, "_decode_stream", None)
        if stream is None:
            stream = self._decode_stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):  # reads only CPU bytes: no need to wait for the training stream
            images = self._decode(files, device)
        main.wait_stream(stream)
        images.record_stream(main)  # allocated on the side stream, read by the training stream
        return images, targets

    def _decode(self, files: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        decoded = torchvision.io.decode_jpeg(files, mode=torchvision.io.ImageReadMode.RGB, device=device)
        return torch.stack([random_resized_crop_flip(img, self.image_size) for img in decoded])


def bench_stall(setup: Setup) -> list[dict[str, Any]]:
    """Section ``stall``: ours fed by the real JPEG loader (PIL; and GPU decode) ÷ ours fed synthetic device batches.

    One model (bf16-mixed + channels-last + compile, as ``configs/trainer/gpu_fast.yaml``) serves every variant.
    The loader's workers deliver their first batches in a burst, so the warm-up is at least 2 batches per worker
    (``prefetch_factor``) and the timed window at least 4 per worker.
    """
    workers = setup.workers
    warmup = max(setup.warmup, 2 * workers)
    steps = max(setup.steps, 4 * workers)
    total_images = (warmup + steps + 1) * setup.batch
    root = Path(setup.data_dir) if setup.data_dir else Path(temp_dir("lt_gpu_jpegs_"))
    model = ours_model(setup, channels_last=True, compiled=True)
    variants: dict[str, Callable[[], float]] = {
        "synthetic on-device batches": ours_synthetic(setup, model, warmup, steps),
    }
    details: dict[str, Any] = {"workers": workers, "warmup": warmup, "steps": steps, "images": total_images}

    def loader_variant(dm: ImageFolderDataModule) -> Callable[[], float]:
        def run() -> float:
            timer = StepTimer(warmup, steps, setup.torch_device)
            fit_quiet(bare_trainer(setup, warmup + steps, [timer]), model, datamodule=dm)
            return timer.rate() * setup.batch

        return run

    for width, height in setup.jpeg_sizes:
        folder = root / f"{width}x{height}"
        # as many distinct files as 500x375 would have, scaled down by pixel count for big images (generation time)
        distinct = min(setup.unique_images, max(16, round(setup.unique_images * 500 * 375 / (width * height))))
        stamp = f"{total_images} images, {setup.classes} classes, {distinct} distinct"
        if not (folder / ".made").is_file() or (folder / ".made").read_text() != stamp:  # (re)generate
            t0 = time.perf_counter()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            unique = make_photo_jpegs(folder, setup.classes, total_images, distinct, width, height)
            (folder / ".made").write_text(stamp)
            print(f"  generated {total_images} JPEGs ({unique} distinct) of {width}x{height} in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)  # fmt: skip
        common = {
            "train_dir": str(folder),
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "image_size": setup.size,
            "batch_size": setup.batch,
            "num_workers": workers,
            "augmentation": "standard",
            "seed": 0,
            "loader_timeout": LOADER_TIMEOUT_S,
        }
        dm = ImageFolderDataModule(**common)
        if dm.num_classes != setup.classes:
            raise RuntimeError(f"{folder} has {dm.num_classes} class folders, expected {setup.classes}")
        variants[f"{width}x{height} JPEG, PIL in {workers} workers"] = loader_variant(dm)
        if setup.gpu_decode:
            where = "GPU" if setup.torch_device.type == "cuda" else "CPU (smoke)"
            variants[f"{width}x{height} JPEG, decode_jpeg on {where}"] = loader_variant(GpuDecodeDataModule(**common))
        details[f"{width}x{height} bytes/file"] = round(
            statistics.mean(p.stat().st_size for p in (folder / ".unique").glob("*.jpg"))
        )
    section = f"G4 data stall {setup.backbone} bf16+CL+compile (img/s, b{setup.batch} {setup.size}px)"
    rates = interleaved(variants, setup.rounds)
    cmd = _cmd(setup, "stall")
    rows = ratio_rows(section, rates, "synthetic on-device batches", cmd, GOAL_STALL) + rate_rows(
        section, rates, setup, cmd
    )
    for row in rows:
        row["details"] = details
    return rows
