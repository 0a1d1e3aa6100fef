"""Backbone registry: every name builds, names and weights are validated, local weight files load safely."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torchvision.models.regnet import BlockParams

from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier
from lit_transfer.models.backbones import build_backbone, list_backbones, resolve_weights

# --- the registry ---------------------------------------------------------------------------------------------------


@pytest.fixture
def regnet_params_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """RegNet computes its stage widths with tensors and ``.tolist()``; on the meta device that has no data."""
    original = BlockParams.from_init_params

    def on_cpu(*args: object, **kwargs: object) -> BlockParams:
        with torch.device("cpu"):
            return original(*args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", staticmethod(on_cpu))


def test_registry_holds_torchvision_models_and_smallcnn() -> None:
    names = list_backbones()
    assert names == sorted(set(names))
    assert {"resnet18", "resnet50", "vgg16", "inception_v3", "vit_h_14", "smallcnn"} <= set(names)
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_builds_and_gives_features(name: str, regnet_params_on_cpu: None) -> None:
    size = 299 if name == "inception_v3" else 224
    with torch.device("meta"):  # no memory, no init cost: even ViT-H builds instantly
        backbone = build_backbone(name, weights=None)
        assert backbone.feature_dim > 0
        assert all(p.device.type == "meta" for p in backbone.module.parameters())
        features = backbone.module.eval()(torch.empty(2, 3, size, size))
    assert features.shape == (2, backbone.feature_dim)
    assert len(backbone.mean) == len(backbone.std) == 3


def test_smallcnn_real_forward_at_32px() -> None:
    backbone = build_backbone("smallcnn")
    assert backbone.feature_dim == 64
    assert backbone.module(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    assert backbone.removed_prefix is None


def test_classification_layer_is_replaced_by_identity() -> None:
    backbone = build_backbone("resnet18")
    assert isinstance(backbone.module.fc, torch.nn.Identity)
    assert backbone.removed_prefix == "fc"
    assert backbone.feature_dim == 512
    with torch.device("meta"):
        vgg = build_backbone("vgg16")
    assert isinstance(vgg.module.classifier[6], torch.nn.Identity)
    assert vgg.removed_prefix == "classifier.6"


@pytest.mark.parametrize(("typo", "meant"), [("resnet5", "resnet50"), ("vgg61", "vgg16"), ("Resnet18", "resnet18")])
def test_unknown_backbone_suggests_close_names(typo: str, meant: str) -> None:
    with pytest.raises(ValueError, match="unknown backbone") as info:
        build_backbone(typo)
    assert repr(meant) in str(info.value)


def test_unknown_backbone_without_close_names_points_to_the_list() -> None:
    with pytest.raises(ValueError, match="list_backbones"):
        build_backbone("qqqqqqqqqqqq")


# --- weights names ----------------------------------------------------------------------------------------------------


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="IMAGENET9K") as info:
        build_backbone("resnet50", weights="IMAGENET9K")
    message = str(info.value)
    for valid in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2"):
        assert valid in message


def test_resolve_weights_returns_the_enum_member_without_downloading() -> None:
    # the autouse fixture makes any download raise: resolving must not load anything
    weights = torchvision.models.ResNet50_Weights
    assert resolve_weights("resnet50", "DEFAULT") is weights.DEFAULT
    assert resolve_weights("resnet50", "DEFAULT") is weights.IMAGENET1K_V2
    assert resolve_weights("resnet50", "IMAGENET1K_V1") is weights.IMAGENET1K_V1
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is weights.IMAGENET1K_V1


def test_weights_of_another_model_are_refused() -> None:
    with pytest.raises(ValueError, match="ResNet50_Weights"):
        resolve_weights("resnet50", "ResNet18_Weights.IMAGENET1K_V1")


def test_named_weights_for_a_registered_backbone_are_refused() -> None:
    with pytest.raises(ValueError, match="no named weights"):
        build_backbone("smallcnn", weights="DEFAULT")
    with pytest.raises(ValueError, match="no torchvision weights"):
        resolve_weights("smallcnn", "DEFAULT")


def test_named_weights_are_loaded_through_torchvision() -> None:
    # the build really asks torchvision for the weights (which the test guard refuses to download)
    with pytest.raises(ValueError, match="tried to download"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")


# --- seed 002: VGG16 feature extraction -------------------------------------------------------------------------------


def test_seed002_vgg16_parameter_count() -> None:
    with torch.device("meta"):
        model = TransferClassifier(
            num_classes=100, backbone="vgg16", weights=None, hidden_dims=[256], dropout=0.4, freeze="backbone"
        )
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == 135_335_076
    assert trainable == 1_074_532
    assert trainable == sum(p.numel() for p in model.head.parameters())


# --- local weights files ----------------------------------------------------------------------------------------------


@pytest.fixture
def resnet18_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet18 state dict, fc included, with non-trivial BN statistics."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(7)
    return model.state_dict()


def assert_backbone_equals(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_fresh_builds_differ_so_loading_is_observable(resnet18_state: dict[str, torch.Tensor]) -> None:
    fresh = build_backbone("resnet18").module.state_dict()
    assert not torch.equal(fresh["conv1.weight"], resnet18_state["conv1.weight"])


def test_plain_state_dict_loads(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    assert_backbone_equals(build_backbone("resnet18", str(path)).module, resnet18_state)


def test_weights_file_without_slash_is_a_file_not_a_weights_name(
    in_tmp: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    torch.save(resnet18_state, in_tmp / "weights.pt")
    assert_backbone_equals(build_backbone("resnet18", "weights.pt").module, resnet18_state)


def test_torchvision_references_checkpoint_loads(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "checkpoint.pth"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    torch.save({"model": resnet18_state, "optimizer": optimizer.state_dict(), "epoch": 89, "args": None}, path)
    assert_backbone_equals(build_backbone("resnet18", str(path)).module, resnet18_state)


def lit_checkpoint(state: dict[str, torch.Tensor], backbone: str = "resnet18") -> dict:
    tensors = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    tensors |= {"head.0.weight": torch.randn(3, 512), "head.0.bias": torch.randn(3), "mean": torch.zeros(1, 3, 1, 1)}
    return {"state_dict": tensors, "hyper_parameters": {"backbone": backbone, "num_classes": 3}, "epoch": 4}


def test_lit_transfer_checkpoint_loads_the_backbone_and_ignores_the_head(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(lit_checkpoint(resnet18_state), path)
    assert_backbone_equals(build_backbone("resnet18", str(path)).module, resnet18_state)


def test_lit_transfer_checkpoint_of_another_backbone_is_refused(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(lit_checkpoint(resnet18_state, backbone="resnet34"), path)
    with pytest.raises(ValueError, match="resnet34") as info:
        build_backbone("resnet18", str(path))
    assert str(path) in str(info.value)


def test_checkpoint_without_backbone_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r"no 'backbone\.' tensors"):
        build_backbone("resnet18", str(path))


def test_real_lit_transfer_checkpoint_loads(in_tmp: Path, image_tree: Path) -> None:
    # a checkpoint written by Lightning itself (loops, callbacks, optimizer states…) must load with weights_only=True
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=in_tmp,
    )
    trainer.fit(model, ImageFolderDataModule(root=str(image_tree), image_size=32, batch_size=4, num_workers=0))
    path = in_tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = build_backbone("resnet18", str(path)).module.state_dict()
    expected = model.backbone.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not torch.equal(loaded["conv1.weight"], build_backbone("resnet18").module.state_dict()["conv1.weight"])


@pytest.mark.parametrize("wrap", ["plain", "references"])
def test_ddp_module_prefix_is_stripped(tmp_path: Path, resnet18_state: dict[str, torch.Tensor], wrap: str) -> None:
    state = {f"module.{k}": v for k, v in resnet18_state.items()}
    path = tmp_path / "ddp.pth"
    torch.save(state if wrap == "plain" else {"model": state, "optimizer": {}}, path)
    assert_backbone_equals(build_backbone("resnet18", str(path)).module, resnet18_state)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=r"resnet18\.pth"):
        build_backbone("resnet18", str(path))


def test_weights_of_a_deeper_resnet_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit") as info:
        build_backbone("resnet18", str(path))
    assert str(path) in str(info.value)
    assert "layer1.2" in str(info.value)  # the extra blocks are named


def test_weights_with_other_shapes_name_the_file(tmp_path: Path) -> None:
    # resnet50 uses bottleneck blocks: same key names as resnet18 in part, different shapes
    with torch.device("meta"):
        shapes = torchvision.models.resnet50(weights=None).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not fit") as info:
        build_backbone("resnet18", str(path))
    assert str(path) in str(info.value)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2), torch.ones(2)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        build_backbone("resnet18", str(path))


class Payload:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"echo pwned > '{self.marker}'",)


def test_pickle_payload_is_live(tmp_path: Path) -> None:
    # guards the next test: unsafe loading of this payload really does create the marker
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": Payload(marker)}, tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["bare", "state_dict", "checkpoint"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "pwned"
    payload = Payload(marker)
    obj = {
        "bare": {"conv1.weight": payload},
        "state_dict": payload,
        "checkpoint": {"state_dict": {"backbone.conv1.weight": payload}, "hyper_parameters": {"backbone": "resnet18"}},
    }[layout]
    path = tmp_path / "evil.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match="safely") as info:
        build_backbone("resnet18", str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


# --- named weights: auxiliary heads, offline use, a checkpoint's own normalization ------------------------------------


@pytest.fixture
def serve_random_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's weight loading returns the state dict of a freshly built full model (with auxiliary heads)."""

    def state_dict(self: torchvision.models.WeightsEnum, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        name = {"GoogLeNet_Weights": "googlenet", "Inception_V3_Weights": "inception_v3"}[type(self).__name__]
        builder = torchvision.models.get_model_builder(name)
        return builder(weights=None, aux_logits=True, init_weights=False).state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", state_dict)


@pytest.mark.parametrize(
    ("name", "dim", "aux"), [("googlenet", 1024, ("aux1", "aux2")), ("inception_v3", 2048, ("AuxLogits",))]
)
def test_named_weights_of_models_with_auxiliary_heads(
    name: str, dim: int, aux: tuple[str, ...], serve_random_weights: None
) -> None:
    built = build_backbone(name, weights="DEFAULT")
    assert built.feature_dim == dim
    assert all(getattr(built.module, a) is None for a in aux)  # dropped after loading: no dead parameters to train
    assert not any(n.startswith(aux) for n, _ in built.module.named_parameters())
    built.module.eval()
    size = 75 if name == "inception_v3" else 32
    assert built.module(torch.zeros(1, 3, size, size)).shape == (1, dim)


def test_a_failed_weights_download_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    # torchvision fetches through WeightsEnum.get_state_dict; offline, that is where the URLError comes from
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ValueError) as err:
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "resnet18-f37072fd.pth" in message
    assert "Name or service not known" in message and "null" in message and "local weights file" in message
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in message


def test_a_lit_transfer_checkpoint_brings_its_normalization(in_tmp: Path, image_tree: Path) -> None:
    from lit_transfer.cli import main

    main(["fit", "--data", "ImageFolderDataModule", "--data.root", str(image_tree), "--data.image_size", "32",
          "--data.num_workers", "0", "--data.normalize", "dataset", "--model", "TransferClassifier",
          "--model.backbone", "smallcnn", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--experiment", "up"])  # fmt: skip
    ckpt = in_tmp / "runs/up/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["lit_transfer"]
    assert saved["mean"] != pytest.approx([0.485, 0.456, 0.406], abs=0.01)  # the tree's own statistics
    downstream = TransferClassifier(num_classes=3, backbone="smallcnn", weights=str(ckpt), freeze="backbone")
    assert downstream.mean.flatten().tolist() == pytest.approx(saved["mean"])
    assert downstream.std.flatten().tolist() == pytest.approx(saved["std"])
    explicit = TransferClassifier(num_classes=3, backbone="smallcnn", weights=str(ckpt), mean=[0.5] * 3, std=[0.2] * 3)
    assert explicit.mean.flatten().tolist() == [0.5] * 3  # an explicit choice still wins
