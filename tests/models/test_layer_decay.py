"""Layer-wise learning-rate decay: per-stage groups, their lrs through real fits and schedules, logging, resume."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import run_dir, tiny_args
from test_lr_find import lr_find_args, scalars
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_transfer.callbacks.layout import LR_REGEX
from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier
from lit_transfer.models.optim import parameter_groups

LR, FACTOR, DECAY = 0.1, 0.1, 0.5
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": LR}}
RESNET_TOP_DOWN = ["layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
SMALLCNN_TOP_DOWN = ["8", "4", "2", "0"]  # its Sequential's children with parameters: three convs and the linear

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def model(backbone: str | dict[str, Any] = "resnet18", **kwargs: Any) -> TransferClassifier:
    options: dict[str, Any] = {"optimizer": SGD, "backbone_lr_factor": FACTOR, "layer_decay": DECAY} | kwargs
    return TransferClassifier(num_classes=3, backbone=backbone, **options)


def groups_of(classifier: TransferClassifier) -> list[dict[str, Any]]:
    optimizer = classifier.configure_optimizers()
    return (optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer).param_groups


def ids(params: Any) -> set[int]:
    return {id(p) for p in params}


def assert_partition(groups: list[dict[str, Any]], params: list[nn.Parameter]) -> None:
    """Every parameter is in exactly one group, and the groups hold nothing else."""
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)), "a parameter is in two groups"
    assert set(listed) == ids(params)


# --- the groups ---------------------------------------------------------------------------------------------------


def test_resnet18_stages_decay_from_the_top() -> None:
    classifier = model()
    groups = groups_of(classifier)
    assert [g["name"] for g in groups] == ["head"] + [f"backbone.{s}" for s in RESNET_TOP_DOWN]
    assert groups[0]["lr"] == LR and ids(groups[0]["params"]) == ids(classifier.head.parameters())
    for depth, (stage, group) in enumerate(zip(RESNET_TOP_DOWN, groups[1:], strict=True)):
        assert group["lr"] == pytest.approx(LR * FACTOR * DECAY**depth, rel=1e-12), stage
        by_prefix = [p for n, p in classifier.backbone.named_parameters() if n.split(".")[0] == stage]
        assert ids(group["params"]) == ids(by_prefix), stage
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.01, 0.005, 0.0025, 0.00125, 0.000625, 0.0003125])
    assert_partition(groups, list(classifier.parameters()))


def test_null_keeps_the_two_groups_of_before() -> None:
    classifier = model(layer_decay=None)
    groups = groups_of(classifier)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", LR), ("backbone", pytest.approx(LR * FACTOR))]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in classifier.backbone.parameters()]  # same order


def test_frozen_stages_stay_out_and_the_rest_keep_their_depth() -> None:
    frozen = groups_of(model(freeze=2))  # conv1 and bn1 frozen for the whole run
    assert [g["name"] for g in frozen] == ["head"] + [f"backbone.{s}" for s in RESNET_TOP_DOWN[:4]]
    assert [g["lr"] for g in frozen[1:]] == pytest.approx([LR * FACTOR * DECAY**d for d in range(4)])
    thawing = model(freeze=2, unfreeze_milestones=[1])  # they train later: in their groups from the start
    groups = groups_of(thawing)
    assert [g["name"] for g in groups] == ["head"] + [f"backbone.{s}" for s in RESNET_TOP_DOWN]
    assert groups[-1]["lr"] == pytest.approx(LR * FACTOR * DECAY**5)
    assert_partition(groups, list(thawing.parameters()))


def test_timm_backbone_gets_timm_s_own_layer_decay_scales() -> None:
    from timm.optim import param_groups_layer_decay

    classifier = model("timm/resnet18")
    groups = groups_of(classifier)
    blocks = [f"layer{s}.{b}" for s in (4, 3, 2, 1) for b in (1, 0)]
    assert [g["name"] for g in groups] == ["head"] + [f"backbone.{n}" for n in [*blocks, "conv1+bn1"]]
    assert_partition(groups, list(classifier.parameters()))
    # the reference: timm's BEiT-style groups on the backbone alone (no classifier: its top block has scale 1)
    reference = param_groups_layer_decay(classifier.backbone, weight_decay=0.0, layer_decay=DECAY)
    scale = {id(p): g["lr_scale"] for g in reference for p in g["params"]}
    assert len(set(scale.values())) == len(groups) - 1
    for group in groups[1:]:
        for param in group["params"]:
            assert group["lr"] == pytest.approx(LR * FACTOR * scale[id(param)], rel=1e-12), group["name"]


def test_timm_vit_layers_are_named_by_their_modules() -> None:
    names = [g["name"] for g in groups_of(model("timm/test_vit"))]
    assert names[:2] == ["head", "backbone.blocks.5+norm"]  # timm puts the final norm with the last block
    assert names[-1] == "backbone.cls_token+pos_embed+patch_embed"
    assert names[2:-1] == [f"backbone.blocks.{i}" for i in (4, 3, 2, 1, 0)]


class WithOwnParameter(nn.Module):
    """A user's module with a parameter of its own besides two children."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.stem = nn.Conv2d(3, 4, 3)
        self.top = nn.Linear(4, 4)


def test_own_module_stages_are_its_children_and_loose_parameters_the_bottom() -> None:
    classifier = model({"class_path": "own_backbone_support.TinyNet"})
    groups = groups_of(classifier)
    assert [g["name"] for g in groups] == ["head", "backbone.proj", "backbone.block", "backbone.stem"]
    assert_partition(groups, list(classifier.parameters()))
    backbone, head = WithOwnParameter(), nn.Linear(4, 2)
    groups = parameter_groups(head, backbone, LR, FACTOR, set(), False, layer_decay=DECAY)
    assert [(g["name"], [id(p) for p in g["params"]]) for g in groups[1:]] == [
        ("backbone.top", [id(backbone.top.weight), id(backbone.top.bias)]),
        ("backbone.stem", [id(backbone.stem.weight), id(backbone.stem.bias)]),
        ("backbone.other", [id(backbone.scale)]),
    ]
    assert groups[-1]["lr"] == pytest.approx(LR * FACTOR * DECAY**2)


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, math.nan])
def test_layer_decay_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"model\.init_args\.layer_decay=.*\(0, 1\]"):
        model(layer_decay=value)
    model(layer_decay=1.0)  # the closed end: every stage at the top stage's lr


def test_layer_decay_outside_0_1_is_a_config_error(image_tree: Path, in_tmp: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(image_tree, "--model.layer_decay", "1.5")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "model.init_args.layer_decay=1.5" in err and "Traceback" not in err
    assert not (in_tmp / "runs").exists()


# --- through a real fit: schedules and unfreezing ------------------------------------------------------------------


class StepRecorder(pl.Callback):
    """Each group's lr at every optimizer step; with ``watch``, each backbone parameter's change and gradient."""

    def __init__(self, watch: bool = False) -> None:
        self.steps: list[dict[str, float]] = []
        self.watch = watch
        self.before: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.moves: list[tuple[int, dict[str, float], dict[str, tuple[torch.Tensor, torch.Tensor | None]]]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        if self.watch:
            self.before = {
                n: (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                for n, p in pl_module.backbone.named_parameters()
            }

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if self.watch:
            after = {n: p.detach() for n, p in pl_module.backbone.named_parameters()}
            deltas = {n: (after[n] - before, grad) for n, (before, grad) in self.before.items()}
            self.moves.append((trainer.current_epoch, self.steps[-1], deltas))


def fit(classifier: TransferClassifier, batches: int, epochs: int, recorder: StepRecorder) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(batches, 3, 8, 8), torch.arange(batches) % 3)
    pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder], num_sanity_val_steps=0,
    ).fit(classifier, DataLoader(data, batch_size=1))  # fmt: skip


def ratios(lrs: dict[str, float]) -> list[float]:
    return [lrs[f"backbone.{s}"] / lrs["head"] for s in SMALLCNN_TOP_DOWN]


WANTED_RATIOS = [FACTOR * DECAY**d for d in range(len(SMALLCNN_TOP_DOWN))]


@pytest.mark.parametrize(
    "schedule",
    [
        {"warmup_epochs": 0.5, "cosine": True},  # 2 warm-up steps, then cosine over 4
        {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.2}}},
    ],
    ids=["warmup-cosine", "one-cycle"],
)
def test_schedules_keep_the_per_group_ratios(schedule: dict[str, Any]) -> None:
    recorder = StepRecorder()
    fit(model("smallcnn", **schedule), batches=3, epochs=2, recorder=recorder)
    assert len(recorder.steps) == 6
    assert len({lrs["head"] for lrs in recorder.steps}) == 6  # the schedule really moved the lr every step
    for step, lrs in enumerate(recorder.steps):
        assert ratios(lrs) == pytest.approx(WANTED_RATIOS, rel=1e-9), step
    if "lr_scheduler" in schedule:  # the peak is max_lr for the head, scaled down per stage
        peak = {name: max(lrs[name] for lrs in recorder.steps) for name in recorder.steps[0]}
        assert ratios(peak) == pytest.approx(WANTED_RATIOS, rel=1e-9)


def test_thawed_parameters_train_at_their_group_s_lr() -> None:
    recorder = StepRecorder(watch=True)
    classifier = model("smallcnn", freeze="backbone", unfreeze_at_epoch=1)
    fit(classifier, batches=2, epochs=2, recorder=recorder)
    assert [epoch for epoch, _, _ in recorder.moves] == [0, 0, 1, 1]
    for epoch, lrs, deltas in recorder.moves:
        assert ratios(lrs) == pytest.approx(WANTED_RATIOS)
        for stage in SMALLCNN_TOP_DOWN:
            moves = [(d.double(), g) for n, (d, g) in deltas.items() if n.split(".")[0] == stage]
            if epoch == 0:  # frozen: no gradient, no change
                assert all(g is None and torch.count_nonzero(d) == 0 for d, g in moves), stage
                continue
            assert all(g is not None and torch.count_nonzero(g) > 0 for _, g in moves), stage
            # plain SGD steps by -lr × gradient: the lr the stage really moved at, by least squares over its tensors
            grads = [g.double() for _, g in moves if g is not None]
            moved = -sum(float((d * g).sum()) for (d, _), g in zip(moves, grads, strict=True))
            applied = moved / sum(float((g * g).sum()) for g in grads)
            assert applied == pytest.approx(lrs[f"backbone.{stage}"], rel=1e-3), stage


# --- the command line: TensorBoard and exact resume ----------------------------------------------------------------


def test_one_lr_scalar_per_group_and_exact_resume(image_tree: Path, in_tmp: Path) -> None:
    decay = ["--model.layer_decay", "0.5"]
    main(["fit", *tiny_args(image_tree, *decay, epochs=2)])
    events = EventAccumulator(str(run_dir(in_tmp)))
    events.Reload()
    lr_tags = sorted(t for t in events.Tags()["scalars"] if t.startswith("lr-"))
    names = ["head"] + [f"backbone.{s}" for s in SMALLCNN_TOP_DOWN]
    assert lr_tags == sorted(f"lr-AdamW/{n}" for n in names)
    for depth, name in enumerate(names[1:]):  # AdamW's default lr 1e-3, backbone_lr_factor 1
        values = [e.value for e in events.Scalars(f"lr-AdamW/{name}")]
        assert len(values) == 2 and values == pytest.approx([1e-3 * 0.5**depth] * 2), name
    assert all(re.search(LR_REGEX, t) for t in lr_tags)  # all on the layout's learning-rate chart

    main(["fit", *tiny_args(image_tree, *decay, "--experiment", "halves", epochs=1)])
    main(["fit", *tiny_args(image_tree, *decay, "--experiment", "halves", "--ckpt_path", "last", epochs=2)])
    whole = torch.load(run_dir(in_tmp) / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(in_tmp / "runs/halves/version_0/checkpoints/last.ckpt", weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 1
    assert [g["name"] for g in resumed["optimizer_states"][0]["param_groups"]] == names
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_lr_find_steps_every_group_at_the_tried_lr(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[dict[str, float]] = []
    original = TransferClassifier.on_before_optimizer_step

    def spy(self: TransferClassifier, optimizer: torch.optim.Optimizer) -> None:
        steps.append({g["name"]: float(g["lr"]) for g in optimizer.param_groups})
        original(self, optimizer)

    monkeypatch.setattr(TransferClassifier, "on_before_optimizer_step", spy)
    main(lr_find_args(image_tree, "--model.layer_decay", "0.5"))
    tried = scalars(in_tmp / "runs" / "tiny" / "lr_find", "lr_find/lr")
    assert len(steps) == len(tried) == 20
    for lrs, lr in zip(steps, tried, strict=True):  # the range test flattens the decay: one lr for all groups
        assert list(lrs) == ["head"] + [f"backbone.{s}" for s in SMALLCNN_TOP_DOWN]
        assert all(v == pytest.approx(lr, rel=1e-6) for v in lrs.values())
