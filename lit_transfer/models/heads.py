"""Classification heads: linear, or an MLP of hidden layers with ReLU and dropout."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_head(
    in_features: int, num_classes: int, hidden_dims: Sequence[int] = (), dropout: float = 0.0
) -> nn.Sequential:
    """``in_features`` → [Linear → ReLU → Dropout] per hidden size → Linear(num_classes).

    With no hidden sizes, dropout (if any) is applied to the features before the single linear layer.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: the data has no classes")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if any(hidden < 1 for hidden in hidden_dims):
        raise ValueError(f"hidden_dims={list(hidden_dims)}: every hidden layer needs at least one unit")
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    if not hidden_dims and dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
