"""Classification heads: layer layout, shapes and argument validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_transfer.models.heads import build_head


def layer_types(head: nn.Sequential) -> list[type[nn.Module]]:
    return [type(m) for m in head]


def test_no_hidden_layers_is_one_linear() -> None:
    head = build_head(512, 10)
    assert layer_types(head) == [nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (512, 10)
    assert head(torch.randn(4, 512)).shape == (4, 10)


def test_linear_head_with_dropout_drops_the_features_first() -> None:
    head = build_head(64, 3, [], dropout=0.5)
    assert layer_types(head) == [nn.Dropout, nn.Linear]
    assert head[0].p == 0.5


def test_seed000_head_is_linear_relu_dropout_linear() -> None:
    head = build_head(2048, 5, [512], dropout=0.25)
    assert layer_types(head) == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (2048, 512)
    assert head[2].p == 0.25
    assert (head[3].in_features, head[3].out_features) == (512, 5)
    assert head(torch.randn(3, 2048)).shape == (3, 5)


def test_hidden_layers_without_dropout_have_no_dropout_modules() -> None:
    head = build_head(32, 4, [16, 8])
    assert layer_types(head) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [16, 8, 4]


def test_dropout_is_active_in_train_mode_only() -> None:
    torch.manual_seed(0)
    head = build_head(256, 2, [256], dropout=0.5)
    x = torch.randn(8, 256)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_dropout_raises(dropout: float) -> None:
    with pytest.raises(ValueError, match="dropout"):
        build_head(16, 3, [8], dropout=dropout)


@pytest.mark.parametrize("num_classes", [0, -1])
def test_invalid_num_classes_raises(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_head(16, num_classes)


@pytest.mark.parametrize("hidden_dims", [[0], [8, -4]])
def test_non_positive_hidden_size_raises(hidden_dims: list[int]) -> None:
    with pytest.raises(ValueError, match="hidden_dims"):
        build_head(16, 3, hidden_dims)
