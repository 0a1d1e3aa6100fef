"""Backbone preprocessing from the weights' own metadata, and ``python -m lit_transfer backbones list/show``."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from timm.data import create_transform, resolve_model_data_config

from lit_transfer.cli import main
from lit_transfer.core.preprocessing import DEFAULT_CROP_PCT, Preprocessing
from lit_transfer.data.transforms import EVAL_CROP_RATIO
from lit_transfer.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from lit_transfer.models.preprocessing import resolve_preprocessing, size_mismatch_warning

# name → (resize, crop, interpolation) of the DEFAULT weights, as torchvision documents them
TORCHVISION = {
    "resnet50": (232, 224, "bilinear"),
    "convnext_tiny": (236, 224, "bilinear"),
    "efficientnet_b0": (256, 224, "bicubic"),
    "efficientnet_b3": (320, 300, "bicubic"),
    "swin_t": (232, 224, "bicubic"),
}
TIMM = ["tf_efficientnet_lite0", "convnext_tiny.fb_in22k", "vit_base_patch16_224.augreg_in21k", "resnet50.a1_in1k"]
TIMM += ["efficientnet_b3.ra2_in1k"]


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_weights_metadata(name: str) -> None:
    pre = resolve_preprocessing(name, "DEFAULT")
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()  # a transform: builds, downloads nothing
    resize, crop, interpolation = TORCHVISION[name]
    assert (pre.resize_size, pre.input_size, pre.interpolation) == (resize, crop, interpolation)
    assert [pre.resize_size] == list(preset.resize_size) and [pre.input_size] == list(preset.crop_size)
    assert pre.interpolation == preset.interpolation.value
    assert pre.mean == tuple(preset.mean) and pre.std == tuple(preset.std)
    assert pre.crop_pct == pytest.approx(crop / resize)
    assert resolve_preprocessing(f"torchvision/{name}", "DEFAULT") == pre


@pytest.mark.parametrize("name", TIMM)
def test_timm_pretrained_cfg(name: str) -> None:
    pre = resolve_preprocessing(f"timm/{name}", "pretrained")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    config = resolve_model_data_config(model)
    resize, crop = create_transform(**config, is_training=False).transforms[:2]  # timm's own eval transform
    assert pre.input_size == config["input_size"][-1] == crop.size[0]
    assert pre.resize_size == resize.size
    assert pre.crop_pct == config["crop_pct"] and pre.interpolation == config["interpolation"]
    assert pre.mean == tuple(config["mean"]) and pre.std == tuple(config["std"])
    assert resolve_preprocessing(f"timm/{name}", None) == pre  # random init: the same architecture config


def test_timm_expected_values() -> None:
    lite = resolve_preprocessing("timm/tf_efficientnet_lite0", None)
    assert lite == Preprocessing(224, 256, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert resolve_preprocessing("timm/vit_base_patch16_224.augreg_in21k", None).resize_size == 248  # crop_pct 0.9
    b3 = resolve_preprocessing("timm/efficientnet_b3.ra2_in1k", None)
    assert (b3.input_size, b3.resize_size) == (288, 329)
    # an untagged architecture gets its default tag's config
    assert resolve_preprocessing("timm/resnet50", None) == resolve_preprocessing("timm/resnet50.a1_in1k", None)


def test_defaults_without_weights() -> None:
    assert DEFAULT_CROP_PCT == EVAL_CROP_RATIO
    expected = Preprocessing(224, 256, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    assert resolve_preprocessing("resnet50", None) == expected
    assert resolve_preprocessing("efficientnet_b3", "weights/b3.pth") == expected  # a local file: no metadata
    assert resolve_preprocessing("smallcnn", None, image_size=32).resize_size == round(32 / EVAL_CROP_RATIO)
    assert resolve_preprocessing("resnet50", None, image_size=160).resize_size == 183  # round(160 / 0.875)


def test_explicit_values_override() -> None:
    pre = resolve_preprocessing("efficientnet_b3", "DEFAULT", image_size=224, mean=(0.5, 0.5, 0.5), std=[0.25] * 3)
    assert pre.input_size == 224 and pre.resize_size == round(224 * 320 / 300)  # the weights' crop ratio kept
    assert pre.interpolation == "bicubic" and pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)
    lite = resolve_preprocessing("timm/tf_efficientnet_lite0", "pretrained", image_size=160)
    assert lite.resize_size == 182  # floor(160 / 0.875), as timm computes it
    assert lite.to_dict() == {
        "input_size": 160, "interpolation": "bicubic", "crop_pct": 0.875, "resize_size": 182, "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    }  # fmt: skip


def test_bad_names_and_values() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        resolve_preprocessing("resnt50", None)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resolve_preprocessing("resnet18", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="tags"):
        resolve_preprocessing("timm/resnet50.no_such_tag", None)
    with pytest.raises(ValueError, match="pretrained"):
        resolve_preprocessing("timm/resnet50", "DEFAULT")
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(224, 256, 0.875, "lanczos3", IMAGENET_MEAN, IMAGENET_STD)


def test_size_mismatch_warning() -> None:
    pre = resolve_preprocessing("efficientnet_b3", "DEFAULT")
    assert size_mismatch_warning(pre, 300) is None
    message = size_mismatch_warning(pre, 224)
    assert message is not None and "224" in message and "300" in message


def test_list_torchvision_and_timm(capsys: pytest.CaptureFixture[str]) -> None:
    main(["backbones", "list", "resnet*"])
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"resnet18", "resnet50", "timm/resnet50.a1_in1k", "timm/resnet18.tv_in1k"} <= set(names)
    assert not any("vgg" in n or "convnext" in n for n in names)
    resnet50 = next(line for line in lines if line.startswith("resnet50 "))
    assert "DEFAULT=IMAGENET1K_V2" in resnet50 and "IMAGENET1K_V1" in resnet50
    main(["backbones", "list", "timm/resnet50.a*"])
    assert all(n.startswith("timm/resnet50.a") for n in capsys.readouterr().out.split())


def test_show_timm_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["backbones", "show", "timm/tf_efficientnet_lite0", "--json"])
    shown = json.loads(capsys.readouterr().out)
    keys = {"feature_dim", "parameters", "input_size", "interpolation", "crop_pct", "resize_size", "mean", "std"}
    assert keys | {"stages"} <= set(shown)
    assert (shown["feature_dim"], shown["input_size"], shown["resize_size"]) == (1280, 224, 256)
    assert (shown["interpolation"], shown["crop_pct"], shown["mean"]) == ("bicubic", 0.875, [0.5, 0.5, 0.5])
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert shown["parameters"] == sum(p.numel() for p in model.parameters())
    assert shown["stages"][0]["name"] == "conv_stem+bn1" and len(shown["stages"]) == 8
    assert sum(s["parameters"] for s in shown["stages"]) == shown["parameters"]


def test_show_torchvision_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["backbones", "show", "resnet18", "--weights", "DEFAULT", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["feature_dim"], shown["parameters"]) == (512, 11_176_512)  # resnet18 without its 1000-class fc
    assert (shown["input_size"], shown["resize_size"], shown["interpolation"]) == (224, 256, "bilinear")
    assert shown["mean"] == list(IMAGENET_MEAN) and shown["std"] == list(IMAGENET_STD)
    assert [s["name"] for s in shown["stages"]] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_show_text_and_size_warning(capsys: pytest.CaptureFixture[str]) -> None:
    main(["backbones", "show", "efficientnet_b3", "--weights", "DEFAULT", "--image_size", "224"])
    out = capsys.readouterr().out
    assert "resize 320 (bicubic), center crop 300" in out and "layer" not in out
    assert "features.0" in out and "warning:" in out and "224" in out.split("warning:")[1]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["show", "resnt50"], "resnet50"),
        (["show", "tf_efficientnet_lite0"], "timm/tf_efficientnet_lite0"),
        (["show", "timm/convnext_tiny.nope"], "timm/convnext_tiny.fb_in22k"),
        (["show", "resnet18", "--weights", "IMAGENET1K_V9"], "IMAGENET1K_V1"),
        (["list", "no_such_backbone*"], "no backbone name matches"),
        (["show"], "name"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_exit_2_in_one_line(argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["backbones", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and len(err.splitlines()) == 1, err
