"""Test-time augmentation (TTA): the view sets, and a model's prediction averaged over the views of each image.

The data module (``data.init_args.tta``) turns each evaluation image into a stack of views ``(V, C, H, W)``, so an
evaluation batch is ``(B, V, C, H, W)``; the model runs the ``B * V`` views and averages their softmax
probabilities per image. Both sides meet here, so data and models need not import each other.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

TTA = Literal["none", "flip", "five_crop", "ten_crop"]
VIEWS: dict[str, int] = {"none": 1, "flip": 2, "five_crop": 5, "ten_crop": 10}
CENTRE_VIEW: dict[int, int] = {2: 0, 5: 4, 10: 4}  # the unflipped image; the centre crop (torchvision's order)


def mean_view_log_probs(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Log of the mean softmax probability over each image's views: ``(B * V, K)`` logits → ``(B, K)``.

    The result serves as the batch's logits: its softmax is the averaged probabilities and cross-entropy on it
    is the negative log-likelihood of the averaged prediction. Computed as a log-sum-exp of log-probabilities,
    in float32, so a confident view cannot underflow to ``log(0)``.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).view(-1, views, logits.shape[-1])
    return torch.logsumexp(log_probs, dim=1) - math.log(views)


def main_view(images: torch.Tensor) -> torch.Tensor:
    """The one view per image to show for a TTA batch ``(B, V, C, H, W)``; a ``(B, C, H, W)`` batch unchanged.

    For ``flip`` the image itself, for ``five_crop`` and ``ten_crop`` the centre crop.
    """
    if images.dim() != 5:
        return images
    return images[:, CENTRE_VIEW.get(images.shape[1], 0)]
