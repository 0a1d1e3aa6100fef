"""The views of test-time augmentation (``data.init_args.tta``): an image and its mirror, or five or ten crops.

:func:`~lit_transfer.data.transforms.eval_transform` ends in one of these modules when TTA is on, so one image
becomes a ``uint8`` stack ``(V, C, H, W)``; collation stacks them to ``(B, V, C, H, W)`` and the model averages
the views' softmax probabilities (:func:`lit_transfer.core.tta.mean_view_log_probs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.core.tta import VIEWS


class FlipViews(torch.nn.Module):
    """The evaluation view and its horizontal mirror, stacked ``(2, C, H, W)``."""

    views = 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[image, mirrored image]``."""
        return torch.stack([image, TF.horizontal_flip(image)])


class CropViews(torch.nn.Module):
    """torchvision's ``FiveCrop`` (four corners, then the centre) or ``TenCrop`` (those and their mirrors), stacked.

    Applied to the resized image, before any central crop, as torchvision's reference evaluation does.
    """

    def __init__(self, size: int, mirrored: bool) -> None:
        super().__init__()
        self.size = size
        self.mirrored = mirrored
        self.views = 10 if mirrored else 5

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The ``(V, C, size, size)`` crops of ``image``."""
        crops = TF.ten_crop(image, [self.size, self.size]) if self.mirrored else TF.five_crop(image, [self.size] * 2)
        return torch.stack(list(crops))

    def extra_repr(self) -> str:
        """Size and whether the crops are mirrored too."""
        return f"size={self.size}, mirrored={self.mirrored}"


def check_tta(tta: str, pre: Preprocessing) -> None:
    """Raise when ``tta`` is unknown, or its crops cannot be taken with the preprocessing ``pre``.

    Crops need the resized image to hold ``input_size`` both ways (``resize_size >= input_size``, i.e.
    ``crop_pct <= 1``), and make no sense with ``crop_mode: border``, whose letterboxed image is mostly border in
    the corners.
    """
    if tta not in VIEWS:
        raise ValueError(f"data.init_args.tta={tta!r}: use one of {list(VIEWS)}")
    if tta not in ("five_crop", "ten_crop"):
        return
    if pre.crop_mode == "border":
        raise ValueError(
            f"data.init_args.tta={tta} with preprocessing.crop_mode=border: the corner crops of a letterboxed "
            "image are mostly border; use tta: flip, or crop_mode center or squash"
        )
    if pre.resize_size < pre.input_size:
        raise ValueError(
            f"data.init_args.tta={tta}: the evaluation resize ({pre.resize_size} px, crop_pct {pre.crop_pct}) is "
            f"smaller than the {pre.input_size} px crops; use tta: flip, or a crop_pct of at most 1"
        )


def view_stage(tta: str, size: int) -> torch.nn.Module | None:
    """The last stage of the evaluation transform that makes the views, or ``None`` for ``tta: none``."""
    if tta == "flip":
        return FlipViews()
    if tta in ("five_crop", "ten_crop"):
        return CropViews(size, mirrored=tta == "ten_crop")
    return None


def views_of(transform: Callable[..., Any]) -> int:
    """How many views ``transform`` makes of one image: 1 unless it ends in a TTA stage."""
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    last = steps[-1] if steps else None
    return int(last.views) if isinstance(last, FlipViews | CropViews) else 1
