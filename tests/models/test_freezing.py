"""Freeze policies: which parameters freeze, frozen BatchNorm stays in eval mode, and what really happens in a fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier
from lit_transfer.models.freezing import (
    backbone_stages,
    format_parameter_table,
    frozen_batchnorms,
    frozen_parameter_names,
    parameter_table,
)

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")

RESNET_STAGES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
VGG16_STAGES = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)] + ["classifier"]


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    model.classifier[6] = nn.Identity()
    return model


def names_of(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


def under(names: list[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n.startswith(p + ".") for p in prefixes)}


# --- frozen_parameter_names -------------------------------------------------------------------------------------------


def test_stages_in_forward_order(resnet18: nn.Module, vgg16: nn.Module) -> None:
    assert [s for s, _ in backbone_stages(resnet18)] == RESNET_STAGES
    assert [s for s, _ in backbone_stages(vgg16)] == VGG16_STAGES


def test_none_and_backbone(resnet18: nn.Module) -> None:
    assert frozen_parameter_names(resnet18, "none") == set()
    assert frozen_parameter_names(resnet18, "backbone") == set(names_of(resnet18))
    assert len(names_of(resnet18)) == 60


@pytest.mark.parametrize("n", range(len(RESNET_STAGES) + 1))
def test_first_n_resnet_stages(resnet18: nn.Module, n: int) -> None:
    names = names_of(resnet18)
    expected = {name for name in names if name.split(".")[0] in RESNET_STAGES[:n]}
    assert frozen_parameter_names(resnet18, n) == expected
    if 0 < n < len(RESNET_STAGES):
        assert expected and expected != set(names)


def test_first_n_vgg16_stages(vgg16: nn.Module) -> None:
    names = names_of(vgg16)
    assert frozen_parameter_names(vgg16, 3) == {
        "features.0.weight",
        "features.0.bias",
        "features.2.weight",
        "features.2.bias",
        "features.5.weight",
        "features.5.bias",
    }
    all_features = {n for n in names if n.startswith("features.")}
    assert frozen_parameter_names(vgg16, 13) == all_features  # "features.1" must not catch "features.10"
    assert frozen_parameter_names(vgg16, 14) == set(names)


def test_patterns(resnet18: nn.Module) -> None:
    names = names_of(resnet18)
    assert frozen_parameter_names(resnet18, ["layer1"]) == under(names, "layer1")
    assert frozen_parameter_names(resnet18, ["layer2.*"]) == under(names, "layer2")
    assert frozen_parameter_names(resnet18, ["conv1.weight"]) == {"conv1.weight"}
    assert frozen_parameter_names(resnet18, ["conv1", "bn1", "layer1"]) == frozen_parameter_names(resnet18, 3)
    combined = frozen_parameter_names(resnet18, ["layer1", "layer2.*", "conv1.weight"])
    assert combined == under(names, "layer1", "layer2") | {"conv1.weight"}
    assert frozen_parameter_names(resnet18, ["*.bias"]) == {n for n in names if n.endswith(".bias")}
    assert frozen_parameter_names(resnet18, []) == set()


def test_prefix_patterns_stop_at_a_dot(vgg16: nn.Module) -> None:
    assert frozen_parameter_names(vgg16, ["features.2"]) == {"features.2.weight", "features.2.bias"}
    with pytest.raises(ValueError, match=r"'features\.1'"):  # a ReLU: no parameters, and no match in features.10
        frozen_parameter_names(vgg16, ["features.1"])


@pytest.mark.parametrize("pattern", ["layer5", "Layer1", "fc.weight", "head.*"])
def test_pattern_matching_nothing_names_the_stages(resnet18: nn.Module, pattern: str) -> None:
    with pytest.raises(ValueError, match="matches no backbone parameter") as info:
        frozen_parameter_names(resnet18, ["conv1", pattern])
    assert repr(pattern) in str(info.value)
    for stage in RESNET_STAGES:
        assert repr(stage) in str(info.value)


@pytest.mark.parametrize("n", [-1, 7, 100])
def test_stage_count_out_of_range(resnet18: nn.Module, n: int) -> None:
    with pytest.raises(ValueError, match="6 stages") as info:
        frozen_parameter_names(resnet18, n)
    assert "layer4" in str(info.value)


@pytest.mark.parametrize("spec", ["all", "layer1", True, 2.5, None])
def test_invalid_spec(resnet18: nn.Module, spec: Any) -> None:
    with pytest.raises(ValueError, match="freeze="):
        frozen_parameter_names(resnet18, spec)


def test_partially_frozen_batchnorm_is_not_a_frozen_batchnorm(resnet18: nn.Module) -> None:
    frozen = frozen_parameter_names(resnet18, ["bn1.weight", "layer1.0.bn1"])
    assert frozen_batchnorms(resnet18, frozen) == [resnet18.layer1[0].bn1]


# --- BatchNorm modes --------------------------------------------------------------------------------------------------


def bn_modes(backbone: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in backbone.named_modules() if isinstance(m, _BatchNorm)}


@pytest.mark.parametrize("freeze", [2, ["conv1", "bn1", "layer1"]])
def test_frozen_batchnorm_stays_in_eval_mode(freeze: Any) -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze=freeze)
    frozen_prefixes = ("bn1",) if freeze == 2 else ("bn1", "layer1.")
    for _ in range(2):  # also after an eval/train round trip
        model.eval()
        model.train()
        modes = bn_modes(model.backbone)
        assert len(modes) == 20
        for name, training in modes.items():
            assert training is not name.startswith(frozen_prefixes), name
        assert model.backbone.training and model.head.training
        assert model.backbone.layer4[0].conv1.training


def test_fully_frozen_backbone_is_in_eval_mode() -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze="backbone", dropout=0.5, hidden_dims=[8])
    model.train()
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.head.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_unfrozen_backbone_trains_everything() -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze="none")
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# --- the real contract: a fit moves nothing frozen --------------------------------------------------------------------


def fit(model: pl.LightningModule, root: Path, workdir: Path, epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
        **kwargs,
    )
    trainer.fit(model, ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0))
    return trainer


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def bn_buffers(backbone: nn.Module, bns: list[_BatchNorm]) -> dict[str, torch.Tensor]:
    wanted = {id(bn) for bn in bns}
    return {
        f"{name}.{buf}": getattr(m, buf).detach().clone()
        for name, m in backbone.named_modules()
        if id(m) in wanted
        for buf in ("running_mean", "running_var", "num_batches_tracked")
    }


@pytest.mark.parametrize("freeze", ["backbone", 3])
def test_fit_leaves_frozen_parameters_and_statistics_bit_identical(freeze: Any, image_tree: Path, in_tmp: Path) -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", weights=None, freeze=freeze)
    frozen = set(model.frozen)
    assert frozen == frozen_parameter_names(model.backbone, freeze)
    bns = frozen_batchnorms(model.backbone, frozen)
    assert len(bns) == (20 if freeze == "backbone" else 5)  # bn1 + layer1's four
    params_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    stats_before = bn_buffers(model.backbone, bns)
    all_before = snapshot(model)

    model.train()  # as a user or an older Lightning would: must not wake the frozen BatchNorm layers
    trainer = fit(model, image_tree, in_tmp, limit_train_batches=2, limit_val_batches=1)
    assert trainer.current_epoch == 2
    assert trainer.global_step == 4

    params_after = dict(model.backbone.named_parameters())
    for name in frozen:
        assert torch.equal(params_after[name], params_before[name]), name
        assert not params_after[name].requires_grad
    for key, value in bn_buffers(model.backbone, bns).items():
        assert torch.equal(value, stats_before[key]), key

    after = snapshot(model)
    changed = {k for k in after if not torch.equal(after[k], all_before[k])}
    assert any(k.startswith("head.") for k in changed)
    if freeze == 3:
        trainable = {n for n in params_before if n not in frozen}
        assert trainable & {k.removeprefix("backbone.") for k in changed}
        # unfrozen BatchNorm statistics do move, so the check above could catch a frozen one moving
        assert "backbone.layer2.0.bn1.running_mean" in changed
        assert "backbone.layer2.0.bn1.num_batches_tracked" in changed
    else:
        assert not any(k.startswith("backbone.") for k in changed)


# --- gradual unfreezing -----------------------------------------------------------------------------------------------


class Recorder(pl.Callback):
    """Per epoch: which backbone parameters train (after the module's own epoch hook), and weights at epoch end."""

    def __init__(self) -> None:
        self.trainable: dict[int, set[str]] = {}
        self.bn_training: dict[int, dict[str, bool]] = {}
        self.end_state: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            epoch = trainer.current_epoch
            self.trainable[epoch] = {n for n, p in pl_module.backbone.named_parameters() if p.requires_grad}
            self.bn_training[epoch] = bn_modes(pl_module.backbone)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.end_state[trainer.current_epoch] = snapshot(pl_module.backbone)


def sgd_model(**kwargs: Any) -> TransferClassifier:
    return TransferClassifier(
        num_classes=3,
        backbone="resnet18",
        freeze="backbone",
        backbone_lr_factor=0.1,
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
        **kwargs,
    )


def test_unfreeze_at_epoch(image_tree: Path, in_tmp: Path) -> None:
    model = sgd_model(unfreeze_at_epoch=1)
    all_names = set(names_of(model.backbone))
    assert model.frozen_at_epoch(0) == all_names
    assert model.frozen_at_epoch(1) == model.frozen_at_epoch(5) == set()

    optimizer = model.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["head", "backbone"]
    assert groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in model.backbone.parameters()}

    before = snapshot(model.backbone)
    recorder = Recorder()
    trainer = fit(model, image_tree, in_tmp, callbacks=[recorder], limit_train_batches=1, limit_val_batches=1)

    assert recorder.trainable[0] == set()
    assert recorder.trainable[1] == all_names
    assert not any(recorder.bn_training[0].values())
    assert all(recorder.bn_training[1].values())
    for key, value in recorder.end_state[0].items():  # weights and BN statistics still untouched after epoch 0
        assert torch.equal(value, before[key]), key
    assert not torch.equal(recorder.end_state[1]["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert not torch.equal(recorder.end_state[1]["conv1.weight"], before["conv1.weight"])

    (fitted,) = trainer.optimizers
    lrs = {g["name"]: g["lr"] for g in fitted.param_groups}
    assert lrs == {"head": pytest.approx(0.1), "backbone": pytest.approx(0.01)}


def test_without_a_schedule_frozen_parameters_stay_out_of_the_optimizer() -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze=3)
    groups = {g["name"]: g for g in model.configure_optimizers().param_groups}
    in_optimizer = {id(p) for p in groups["backbone"]["params"]}
    for name, param in model.backbone.named_parameters():
        assert (id(param) in in_optimizer) is (name not in model.frozen), name
    frozen_all = TransferClassifier(num_classes=3, backbone="resnet18", freeze="backbone")
    assert [g["name"] for g in frozen_all.configure_optimizers().param_groups] == ["head"]


def test_unfreeze_milestones_thaw_the_top_stages_first() -> None:
    model = sgd_model(unfreeze_milestones=[2, 1])  # given in any order
    names = names_of(model.backbone)
    assert model.frozen_at_epoch(0) == set(names)
    at_1 = model.frozen_at_epoch(1)
    assert at_1 == under(names, "conv1", "bn1", "layer1")  # six stages, two milestones: layer2..layer4 thaw first
    assert not at_1 & under(names, "layer4")
    assert model.frozen_at_epoch(2) == model.frozen_at_epoch(3) == set()


@pytest.mark.parametrize(
    ("freeze", "n_milestones"),
    [
        ("backbone", 2),
        ("backbone", 6),
        (3, 3),
        ("backbone", 4),
        ("backbone", 5),
        (5, 4),
        (3, 5),
        (3, 8),
    ],
)
def test_unfreeze_milestones_only_ever_thaw(freeze: Any, n_milestones: int) -> None:
    model = TransferClassifier(num_classes=3, freeze=freeze, unfreeze_milestones=list(range(1, n_milestones + 1)))
    frozen = [model.frozen_at_epoch(e) for e in range(n_milestones + 2)]
    assert frozen[0] == model.initial_frozen
    assert frozen[n_milestones] == set()
    for epoch in range(n_milestones + 1):
        assert frozen[epoch + 1] <= frozen[epoch], f"epoch {epoch + 1} freezes again what epoch {epoch} trained"
    n_stages = len({n.split(".")[0] for n in model.initial_frozen})
    if n_milestones <= n_stages:  # step by step: every milestone thaws something
        for epoch in range(n_milestones):
            assert frozen[epoch + 1] < frozen[epoch], f"milestone {epoch + 1} thaws nothing"


def test_unfreeze_milestones_in_a_fit(image_tree: Path, in_tmp: Path) -> None:
    model = sgd_model(unfreeze_milestones=[1, 2])
    names = set(names_of(model.backbone))
    before = snapshot(model.backbone)
    recorder = Recorder()
    fit(model, image_tree, in_tmp, epochs=3, callbacks=[recorder], limit_train_batches=1, limit_val_batches=1)

    assert recorder.trainable == {e: names - model.frozen_at_epoch(e) for e in range(3)}
    assert recorder.trainable[0] == set()
    assert "layer4.1.conv2.weight" in recorder.trainable[1]
    assert "conv1.weight" not in recorder.trainable[1]
    assert recorder.trainable[2] == names
    assert recorder.bn_training[1]["bn1"] is False
    assert recorder.bn_training[1]["layer4.0.bn1"] is True

    def moved(epoch: int, key: str) -> bool:
        return not torch.equal(recorder.end_state[epoch][key], before[key])

    assert not moved(0, "layer4.0.conv1.weight")
    assert moved(1, "layer4.0.conv1.weight")
    assert not moved(1, "conv1.weight")
    assert not moved(1, "bn1.running_mean")
    assert not moved(1, "layer1.0.bn1.num_batches_tracked")
    assert moved(2, "conv1.weight")


def test_schedule_arguments_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        sgd_model(unfreeze_at_epoch=1, unfreeze_milestones=[1, 2])


# --- parameter table --------------------------------------------------------------------------------------------------


def check_table(model: TransferClassifier) -> list[tuple[str, int, int]]:
    rows = parameter_table(model.backbone, model.head)
    *parts, total = rows
    assert total[0] == "total"
    assert total[1] == sum(r[1] for r in parts)
    assert total[2] == sum(r[2] for r in parts)
    params = list(model.parameters())
    assert total[1] == sum(p.numel() for p in params if p.requires_grad)
    assert total[2] == sum(p.numel() for p in params if not p.requires_grad)
    return rows


def test_parameter_table_resnet18_partial() -> None:
    model = TransferClassifier(num_classes=3, backbone="resnet18", freeze=3, hidden_dims=[16])
    rows = check_table(model)
    by_stage = {name: (t, f) for name, t, f in rows}
    assert [r[0] for r in rows] == [*RESNET_STAGES, "head", "total"]
    assert by_stage["conv1"] == (0, 9408)
    assert by_stage["layer1"][0] == 0
    assert by_stage["layer4"][1] == 0
    assert by_stage["head"] == (512 * 16 + 16 + 16 * 3 + 3, 0)
    text = format_parameter_table(rows)
    assert "total" in text
    assert "9,408" in text


@pytest.mark.parametrize(("backbone", "freeze"), [("vgg16", "backbone"), ("vit_b_16", 2), ("vit_b_16", "none")])
def test_parameter_table_sums_to_totals(backbone: str, freeze: Any) -> None:
    with torch.device("meta"):
        model = TransferClassifier(num_classes=10, backbone=backbone, freeze=freeze)
    rows = check_table(model)
    if backbone == "vit_b_16":  # class_token is a parameter of no child module
        assert "(other)" in [r[0] for r in rows]
