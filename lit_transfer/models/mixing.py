"""Batch mixing of training batches: torchvision's MixUp and CutMix, and the soft targets the loss trains on.

Each training batch is mixed with its own copy rolled by one (image ``i`` with image ``i - 1``), as
:class:`torchvision.transforms.v2.MixUp` and :class:`~torchvision.transforms.v2.CutMix` pair them. Every draw (whether
a batch is mixed, MixUp or CutMix, the mixing weight, the box) comes from the global torch generator on the CPU, which
:class:`~lit_transfer.callbacks.reproducibility.EpochSeeder` reseeds before every training step: a resumed run mixes
its batches as the uninterrupted run did, each process mixes differently, and the host never waits for the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from lit_transfer.core.batches import FeatureBatch


def check_mixing(mixup_alpha: float, cutmix_alpha: float, mix_prob: float) -> None:
    """Refuse negative alphas and a mixing probability outside [0, 1], naming the config key."""
    for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not alpha >= 0.0:  # also refuses NaN
            raise ValueError(f"model.init_args.{key}={alpha}: use 0 (off) or a positive Beta alpha, e.g. 0.2 or 1.0")
    if not 0.0 <= mix_prob <= 1.0:
        raise ValueError(f"model.init_args.mix_prob={mix_prob}: use a probability in [0, 1], e.g. 1.0 (every batch)")


def replace_inputs(batch: Sequence[Any], inputs: torch.Tensor) -> Sequence[Any]:
    """``batch`` with its first element (images or features) replaced, keeping its type (``Batch``, tuple, list)."""
    if isinstance(batch, tuple) and hasattr(batch, "_replace"):  # a NamedTuple: Batch, FeatureBatch
        return batch._replace(**{batch._fields[0]: inputs})  # type: ignore[attr-defined]
    return type(batch)([inputs, *batch[1:]]) if isinstance(batch, list | tuple) else [inputs, *batch[1:]]


class BatchMixing:
    """MixUp and/or CutMix of training batches, with the soft targets of the mixed inputs.

    With both alphas positive a mixed batch gets MixUp or CutMix with probability 0.5 each (as timm does). When
    mixing is on, every batch, mixed or not, gets probability targets (one-hot for an unmixed one), so the loss is
    the same soft-target cross-entropy throughout; label smoothing and class weights apply to it as to hard labels.

    Args:
        num_classes: number of classes of the one-hot targets.
        mixup_alpha: Beta(alpha, alpha) of MixUp's mixing weight; 0 turns MixUp off.
        cutmix_alpha: Beta(alpha, alpha) of CutMix's kept area; 0 turns CutMix off.
        mix_prob: probability that a batch is mixed at all.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mix_prob: float = 1.0):
        check_mixing(mixup_alpha, cutmix_alpha, mix_prob)
        self.num_classes = num_classes
        self.mix_prob = float(mix_prob)
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether any batch can be mixed (then every training batch gets soft targets)."""
        return (self.mixup is not None or self.cutmix is not None) and self.mix_prob > 0

    def choose(self) -> v2.Transform | None:
        """Draw the next batch's transform from the global torch generator: ``None`` (not mixed), MixUp or CutMix."""
        if self.mix_prob < 1.0 and float(torch.rand(())) >= self.mix_prob:
            return None
        if self.mixup is not None and self.cutmix is not None:
            return self.mixup if float(torch.rand(())) < 0.5 else self.cutmix
        return self.mixup if self.mixup is not None else self.cutmix

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed inputs and their probability targets ``(B, num_classes)``.

        ``inputs`` are images ``(B, C, H, W)`` (``uint8`` ones come back as floats in [0, 1]: MixUp needs floats,
        and mixing before the normalization equals mixing after it) or cached features ``(B, D)`` (MixUp only).
        """
        labels = labels.long()
        if inputs.dim() == 2 and self.cutmix is not None:
            raise ValueError(
                "model.init_args.cutmix_alpha > 0 pastes image boxes, but this batch holds cached features "
                "(cache_features): set model.init_args.cutmix_alpha: 0 or cache_features.enabled: false"
            )
        transform = self.choose()
        if transform is None:
            return inputs, F.one_hot(labels, self.num_classes).float()
        if inputs.dim() == 2:  # features: MixUp takes image-shaped batches
            mixed, targets = transform(inputs[:, :, None, None], labels)
            return mixed.flatten(1), targets
        if inputs.dtype == torch.uint8:
            inputs = inputs.float().div_(255)
        mixed, targets = transform(inputs, labels)
        return mixed, targets

    def mix_batch(self, batch: Sequence[Any]) -> tuple[Sequence[Any], torch.Tensor]:
        """A training batch (images or :class:`~lit_transfer.core.batches.FeatureBatch`) mixed, and its targets."""
        inputs = batch.features if isinstance(batch, FeatureBatch) else batch[0]
        mixed, targets = self(inputs, batch[1])
        return replace_inputs(batch, mixed), targets
