"""Registries refuse a name twice: a backbone or augmentation preset is never silently replaced."""

from __future__ import annotations

import pytest
from torch import nn

from lit_transfer.data import transforms
from lit_transfer.data.transforms import TRANSFORM_PRESETS, register_transform, train_transform
from lit_transfer.models import backbones
from lit_transfer.models.backbones import Backbone, build_backbone, list_backbones, register_backbone


@pytest.fixture
def clean_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    monkeypatch.setattr(transforms, "TRANSFORM_PRESETS", dict(TRANSFORM_PRESETS))


def _tiny() -> Backbone:
    return Backbone(nn.Flatten(), 12)


@pytest.mark.usefixtures("clean_registries")
def test_a_new_backbone_is_registered_once() -> None:
    register_backbone("tiny_test_backbone")(_tiny)
    assert "tiny_test_backbone" in list_backbones()
    assert build_backbone("tiny_test_backbone").feature_dim == 12
    with pytest.raises(ValueError, match="'tiny_test_backbone' is already registered"):
        register_backbone("tiny_test_backbone")(_tiny)
    assert backbones._REGISTRY["tiny_test_backbone"] is _tiny


@pytest.mark.usefixtures("clean_registries")
def test_the_builtin_backbone_cannot_be_replaced() -> None:
    builtin = backbones._REGISTRY["smallcnn"]
    with pytest.raises(ValueError, match="'smallcnn' is already registered"):
        register_backbone("smallcnn")(_tiny)
    assert backbones._REGISTRY["smallcnn"] is builtin


@pytest.mark.usefixtures("clean_registries")
def test_a_torchvision_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'resnet18' would shadow the torchvision model"):
        register_backbone("resnet18")(_tiny)
    assert "resnet18" not in backbones._REGISTRY


@pytest.mark.usefixtures("clean_registries")
def test_a_transform_preset_is_registered_once() -> None:
    def flip(image_size: int) -> transforms.Transform:
        return transforms.eval_transform(image_size)

    register_transform("test_preset")(flip)
    assert train_transform("test_preset", 32) is not None
    for name in ("test_preset", "standard", "none"):
        with pytest.raises(ValueError, match=f"augmentation preset '{name}' is already registered"):
            register_transform(name)(flip)
    assert transforms.TRANSFORM_PRESETS["standard"] is transforms.standard_transform
