"""The checks of BaseImageDataModule's settings, made before anything is scanned or built."""

from __future__ import annotations

from pathlib import Path

from lit_transfer.data.transforms import train_transform


def check_settings(
    image_size: int,
    batch_size: int,
    num_workers: int | None,
    augmentation: str,
    bad_images: str,
    predict_dir: str | None,
    sampler: str,
    normalize: str,
    decode_scale: float | None,
) -> None:
    """Raise on the first setting a data module cannot use, naming it as the configuration spells it."""
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
    if sampler not in ("random", "balanced"):
        raise ValueError(f"data.sampler={sampler!r}: use 'random' or 'balanced'")
    if normalize not in ("model", "dataset"):
        raise ValueError(f"data.normalize={normalize!r}: use 'model' or 'dataset'")
    if decode_scale is not None and decode_scale < 1.25:
        raise ValueError(
            f"data.decode_scale={decode_scale} would decode images smaller than the evaluation resize; use at "
            "least 1.25, or null to always decode in full"
        )
