"""The evaluation preprocessing a backbone's weights were trained with: resize, center crop, interpolation, mean/std.

:class:`Preprocessing` is a plain value; :func:`lit_transfer.models.preprocessing.resolve_preprocessing` finds it
for a backbone and its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEFAULT_CROP_PCT = 0.875  # lit_transfer's own evaluation crop (lit_transfer.data.transforms.EVAL_CROP_RATIO)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize_size`` (with ``interpolation``), center-crop ``input_size``, normalize.

    Attributes:
        input_size: side of the square the network sees (the center crop).
        resize_size: short side the image is resized to before the crop.
        crop_pct: ``input_size / resize_size`` as the weights define it (timm's ``crop_pct``; may exceed 1).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        mean: per-channel mean subtracted from the ``[0, 1]`` image.
        std: per-channel standard deviation it is divided by.
    """

    input_size: int
    resize_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        """Refuse sizes, an interpolation or mean/std that cannot be a preprocessing."""
        if self.input_size <= 0 or self.resize_size <= 0:
            raise ValueError(f"preprocessing: sizes must be positive, not {self.input_size}, {self.resize_size}")
        if self.crop_pct <= 0.0:  # above 1 (timm's volo_*_448): the crop is larger than the resize and pads
            raise ValueError(f"preprocessing: crop_pct must be positive, not {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocessing: interpolation {self.interpolation!r} is not one of {list(INTERPOLATIONS)}"
            )
        if len(self.mean) != len(self.std) or not self.mean or any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing: mean {self.mean} and std {self.std} need one positive std per channel")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``input_size``, ``interpolation``, ``crop_pct``, ``resize_size``, ``mean``, ``std``."""
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
