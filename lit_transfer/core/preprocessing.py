"""The evaluation preprocessing a backbone's weights were trained with: resize, center crop, interpolation, mean/std.

:class:`Preprocessing` is a plain value; :func:`lit_transfer.models.preprocessing.resolve_preprocessing` finds it
for a backbone and its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash", "border")
DEFAULT_CROP_PCT = 0.875  # lit_transfer's own evaluation crop: resize to image_size / 0.875 (256 → 224)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize_size`` (with ``interpolation``), center-crop ``input_size``, normalize.

    ``crop_mode`` is timm's: ``center`` (short side to ``resize_size``, central crop), ``squash`` (both sides to
    ``resize_size``, ignoring the aspect ratio, then the central crop) or ``border`` (long side to ``resize_size``,
    then the central crop, padded with the mean colour where the image is smaller).

    Attributes:
        input_size: side of the square the network sees (the center crop).
        resize_size: short side the image is resized to before the crop.
        crop_pct: ``input_size / resize_size`` as the weights define it (timm's ``crop_pct``; may exceed 1).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        mean: per-channel mean subtracted from the ``[0, 1]`` image.
        std: per-channel standard deviation it is divided by.
        crop_mode: ``center``, ``squash`` or ``border`` (see above).
    """

    input_size: int
    resize_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_mode: str = "center"

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
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"preprocessing: crop_mode {self.crop_mode!r} is not one of {list(CROP_MODES)}")
        if len(self.mean) != len(self.std) or not self.mean or any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing: mean {self.mean} and std {self.std} need one positive std per channel")

    @classmethod
    def default(cls, input_size: int) -> Preprocessing:
        """lit_transfer's own: resize to ``round(input_size / 0.875)``, bilinear, center crop, ImageNet mean/std."""
        return cls(
            input_size, round(input_size / DEFAULT_CROP_PCT), DEFAULT_CROP_PCT, "bilinear", IMAGENET_MEAN, IMAGENET_STD
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict` (a config's or checkpoint's mapping); missing keys take the defaults.

        Raises:
            ValueError: no ``input_size``, an unknown key, or values :class:`Preprocessing` refuses.
        """
        known = {"input_size", "resize_size", "crop_pct", "interpolation", "mean", "std", "crop_mode"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"preprocessing: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        if "input_size" not in values:
            raise ValueError("preprocessing: input_size is missing (the side of the center crop)")
        base = cls.default(int(values["input_size"]))
        crop_pct = float(values.get("crop_pct", base.crop_pct))
        resize = values.get("resize_size")
        return cls(
            input_size=base.input_size,
            resize_size=int(resize) if resize is not None else round(base.input_size / crop_pct),
            crop_pct=crop_pct,
            interpolation=str(values.get("interpolation", base.interpolation)),
            mean=tuple(float(v) for v in values.get("mean", base.mean)),
            std=tuple(float(v) for v in values.get("std", base.std)),
            crop_mode=str(values.get("crop_mode", base.crop_mode)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, one key per field (``input_size``, ``resize_size``, ``interpolation``, …)."""
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "resize_size": self.resize_size,
            "crop_mode": self.crop_mode,
            "mean": list(self.mean),
            "std": list(self.std),
        }
