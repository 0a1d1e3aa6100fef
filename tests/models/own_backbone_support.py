"""Users' own backbone modules for tests/models/test_own_backbone.py, importable by class_path.

pytest puts this folder on the import path (tests/ has no ``__init__.py``), so a config names these classes as
``own_backbone_support.TinyNet``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A small CNN whose ``forward`` returns pooled ``(B, 2 * width)`` features; three stages with parameters."""

    def __init__(self, width: int = 8, act: str = "relu") -> None:
        super().__init__()
        activation: type[nn.Module] = nn.ReLU if act == "relu" else nn.GELU
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), activation())
        self.block = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), activation())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(2 * width, 2 * width)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images → ``(B, 2 * width)`` features."""
        return self.proj(self.pool(self.block(self.stem(x))).flatten(1))


class FeatureMapNet(nn.Module):
    """A module whose ``forward`` returns a ``(B, C, H, W)`` feature map: refused as a backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D feature map, not features."""
        return self.conv(x)


class TimmStyleNet(nn.Module):
    """timm's interface: ``forward_features`` (a map), ``forward_head(pre_logits=...)`` and ``num_features``.

    Its own ``forward`` returns class logits (``num_classes`` of them), which a backbone must not.
    """

    def __init__(self, num_classes: int = 10, with_head: bool = True) -> None:
        super().__init__()
        self.num_features = 12
        self.conv_stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stages = nn.Sequential(nn.Conv2d(6, self.num_features, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Linear(self.num_features, num_classes)
        if not with_head:
            self.forward_head = None  # type: ignore[assignment]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled feature map."""
        return self.stages(self.conv_stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # type: ignore[override]
        """Pooled features with ``pre_logits``, else logits; doubles the features so the test sees it was called."""
        pooled = x.amax(dim=(2, 3)) * 2
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, as a timm model's ``forward``."""
        return self.forward_head(self.forward_features(x))


class NotAModule:
    """A plain class: refused as a backbone."""

    def __init__(self, width: int = 8) -> None:
        self.width = width
