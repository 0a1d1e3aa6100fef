"""A user's own nn.Module as backbone (``model.backbone: {class_path, init_args}``) and the grouped backbone value.

The modules are in ``own_backbone_support`` (this folder, on the import path under pytest). In-process CLI runs use
no loader workers and no progress bar, only for speed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from own_backbone_support import TimmStyleNet, TinyNet

from lit_transfer.callbacks import FeatureCache
from lit_transfer.cli import main
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.export.rebuild import CheckpointError, rebuild_model
from lit_transfer.models import TransferClassifier
from lit_transfer.models.backbone_spec import BackboneSpec, as_spec, backbone_hparams, backbone_identity
from lit_transfer.models.freezing import frozen_at_epoch, stage_parameters

TINY = "own_backbone_support.TinyNet"
TIMM_STYLE = "own_backbone_support.TimmStyleNet"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def own(class_path: str = TINY, **fields: Any) -> dict[str, Any]:
    return {"class_path": class_path, **fields}


def cli_args(root: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--data.val_fraction", "0.25",
        "--data.test_fraction", "0.25",
        "--model", "TransferClassifier",
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "own",
        *extra,
    ]  # fmt: skip


def write_config(path: Path, backbone: Any, **model_args: Any) -> Path:
    config = {"model": {"class_path": "TransferClassifier", "init_args": {"backbone": backbone, **model_args}}}
    path.write_text(yaml.safe_dump(config))
    return path


def last_ckpt(base: Path, version: int = 0) -> Path:
    return base / "runs" / "own" / f"version_{version}" / "checkpoints" / "last.ckpt"


def config_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's one-line configuration error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("lit_transfer: configuration error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- through the command line ---------------------------------------------------------------------------------------


def test_fit_from_a_yaml_class_path_then_validate_its_checkpoint(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(in_tmp / "own.yaml", own(init_args={"width": 4}, input_size=32))
    main(["fit", "--config", str(config), *cli_args(image_tree)])
    ckpt_path = last_ckpt(in_tmp)
    ckpt = torch.load(ckpt_path, weights_only=True)  # plain values only
    assert ckpt["hyper_parameters"]["backbone"] == {"class_path": TINY, "init_args": {"width": 4}, "input_size": 32}
    assert ckpt["hyper_parameters"]["weights"] is None
    names = {k.removeprefix("backbone.") for k in ckpt["state_dict"] if k.startswith("backbone.")}
    assert names == set(TinyNet(width=4).state_dict())  # the module's own parameter names
    assert ckpt["state_dict"]["head.0.weight"].shape == (3, 8)
    written = yaml.safe_load((ckpt_path.parent.parent / "config.yaml").read_text())
    assert written["model"]["init_args"]["backbone"]["init_args"] == {"width": 4}

    # validate re-parses the checkpoint's hyperparameters, but imports its module only when the config names it
    message = config_error(
        ["validate", *cli_args(image_tree, "--model.backbone", "smallcnn"), "--ckpt_path", str(ckpt_path)], capsys
    )
    assert f"model.backbone.class_path: {TINY}" in message and "must not choose code to run" in message
    capsys.readouterr()
    main(["validate", "--config", str(config), *cli_args(image_tree), "--ckpt_path", str(ckpt_path)])
    assert "val_acc" in capsys.readouterr().out

    loaded = TransferClassifier.load_from_checkpoint(ckpt_path, weights_only=True)
    assert isinstance(loaded.backbone, TinyNet) and loaded.backbone.width == 4
    assert torch.equal(loaded.backbone.proj.weight, ckpt["state_dict"]["backbone.proj.weight"])
    with pytest.raises(CheckpointError, match=f"--trust_backbone {TINY}"):
        rebuild_model(ckpt)  # what export does: the checkpoint alone does not choose code to run
    rebuilt = rebuild_model(ckpt, trusted_backbone=TINY)
    with pytest.raises(SystemExit) as refused:
        main(["export", "--ckpt_path", str(ckpt_path), "--out", str(in_tmp / "own.onnx")])
    assert refused.value.code == 2 and f"--trust_backbone {TINY}" in capsys.readouterr().err
    main(["export", "--ckpt_path", str(ckpt_path), "--out", str(in_tmp / "own.onnx"), "--trust_backbone", TINY])
    assert (in_tmp / "own.onnx").is_file()
    assert torch.equal(rebuilt.head[0].weight, ckpt["state_dict"]["head.0.weight"])


def test_the_flag_takes_a_mapping_and_a_typo_is_named(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = f"{{class_path: {TIMM_STYLE}, init_args: {{num_classes: 5}}, input_size: 32}}"
    main(["fit", *cli_args(image_tree, "--model.init_args.backbone", flag, "--trainer.fast_dev_run", "true")])
    message = config_error(["fit", *cli_args(image_tree, "--model.init_args.backbone", "{nam: resnet18}")], capsys)
    assert "unknown keys ['nam']" in message and "class_path" in message
    config = write_config(in_tmp / "typo.yaml", own(init_args={"width": 4}, input_size="big"))
    message = config_error(["fit", "--config", str(config), *cli_args(image_tree)], capsys)
    assert "model.backbone.input_size='big'" in message


def test_flat_flags_keep_working(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    flags = ["--model.init_args.backbone", "resnet50", "--model.init_args.weights", "DEFAULT", "--print_config"]
    with pytest.raises(SystemExit):
        main(["fit", *cli_args(image_tree, *flags)])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert printed["backbone"] == "resnet50" and printed["weights"] == "DEFAULT"

    torch.save({f"net.{k}": v for k, v in TinyNet(width=4).state_dict().items()}, in_tmp / "wrapped.pth")
    flags = [
        "--model.init_args.backbone", f"{{class_path: {TINY}, init_args: {{width: 4}}}}",
        "--model.init_args.weights", str(in_tmp / "wrapped.pth"),
        "--model.init_args.weights_map", '{"strip_prefix": "net."}',
        "--trainer.max_epochs", "1",
    ]  # fmt: skip
    caplog.set_level(logging.INFO)
    main(["fit", *cli_args(image_tree, *flags)])
    assert "by name after strip_prefix 'net.'" in caplog.text
    hparams = torch.load(last_ckpt(in_tmp), weights_only=True)["hyper_parameters"]
    assert hparams["weights"] == str(in_tmp / "wrapped.pth") and hparams["weights_map"] == {"strip_prefix": "net."}


def test_weights_nested_and_flat_are_refused(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(in_tmp / "own.yaml", own(weights="a.pth"))
    message = config_error(["fit", "--config", str(config), *cli_args(image_tree, "--model.weights", "b.pth")], capsys)
    assert "model.backbone.weights='a.pth'" in message and "model.weights='b.pth'" in message
    assert not (in_tmp / "runs").exists()


def test_freeze_backbone_leaves_the_module_bit_identical(image_tree: Path, in_tmp: Path) -> None:
    torch.manual_seed(3)
    start = TinyNet(width=4)
    torch.save(start.state_dict(), in_tmp / "start.pth")
    config = write_config(in_tmp / "own.yaml", own(init_args={"width": 4}, weights=str(in_tmp / "start.pth")))
    extra = ("--model.freeze", "backbone", "--cache_features.enabled", "false")
    main(["fit", "--config", str(config), *cli_args(image_tree, *extra)])
    state = torch.load(last_ckpt(in_tmp), weights_only=True)["state_dict"]
    for name, tensor in start.state_dict().items():  # BatchNorm running statistics included
        assert torch.equal(state[f"backbone.{name}"], tensor), name
    head = TransferClassifier(num_classes=3, backbone=own(init_args={"width": 4}))
    assert not torch.equal(state["head.0.weight"], head.head[0].weight)  # the head trained


def test_cached_features_tell_two_init_args_apart(image_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for act in ("relu", "gelu"):  # the same weights (same seed): only init_args differ
        torch.manual_seed(0)
        model = TransferClassifier(num_classes=3, backbone=own(init_args={"act": act}), freeze="backbone")
        data = ImageFolderDataModule(root=str(image_tree), image_size=32, batch_size=8, num_workers=0,
                                     augmentation="none")  # fmt: skip
        trainer = pl.Trainer(
            accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[FeatureCache(dir=str(cache))], default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=data)
    train = sorted(p.name for p in cache.iterdir() if p.name.startswith("train-"))
    assert len(train) == 2 and all(n.startswith(f"train-{TINY}-") for n in train)


# --- building -------------------------------------------------------------------------------------------------------


def test_the_feature_size_is_found_and_the_module_kept_as_it_is() -> None:
    model = TransferClassifier(num_classes=3, backbone=own(init_args={"width": 5}))
    assert isinstance(model.backbone, TinyNet) and model.head[0].in_features == 10
    assert model.backbone.training  # the probe's eval mode was undone
    assert model.backbone_name == TINY and model.hparams["backbone"]["init_args"] == {"width": 5}
    model.backbone.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.forward_features(x), model.backbone(model.normalize(x)))


@pytest.mark.parametrize("with_head", [True, False])
def test_a_timm_style_module_gives_its_pooled_features(with_head: bool) -> None:
    model = TransferClassifier(num_classes=3, backbone=own(TIMM_STYLE, init_args={"with_head": with_head}))
    net = model.backbone
    assert isinstance(net, TimmStyleNet) and model.head[0].in_features == 12  # not its 10 class logits
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fmap = net.forward_features(model.normalize(x))
        expected = fmap.amax(dim=(2, 3)) * 2 if with_head else fmap.mean(dim=(2, 3))
        assert torch.allclose(model.forward_features(x), expected)
    assert {n for n, _ in net.named_parameters()} == {n for n, _ in TimmStyleNet().named_parameters()}


def test_a_feature_map_output_is_refused_with_its_shape() -> None:
    with pytest.raises(ValueError, match=r"returned shape \(1, 4, 32, 32\); expected \(batch, features\)"):
        TransferClassifier(num_classes=3, backbone=own("own_backbone_support.FeatureMapNet", input_size=32))


@pytest.mark.parametrize(
    ("class_path", "expected"),
    [
        ("own_backbone_support.NotAModule", "is the class own_backbone_support.NotAModule, not an nn.Module"),
        ("own_backbone_support.Missing", "'own_backbone_support.Missing' is not importable"),
        ("no_such_package.Net", "'no_such_package.Net' is not importable"),
        ("torch.nn.functional.relu", "is a function, not an nn.Module subclass"),
    ],
)
def test_what_is_not_an_importable_module_class_is_refused(class_path: str, expected: str) -> None:
    with pytest.raises(ValueError, match="backbone class_path") as err:
        TransferClassifier(num_classes=3, backbone=own(class_path))
    assert expected in str(err.value)


def test_wrong_init_args_and_named_weights_are_refused() -> None:
    with pytest.raises(ValueError, match=r"cannot build backbone own_backbone_support.TinyNet with init_args"):
        TransferClassifier(num_classes=3, backbone=own(init_args={"depth": 3}))
    with pytest.raises(ValueError, match="weights='DEFAULT' names no file"):
        TransferClassifier(num_classes=3, backbone=own(weights="DEFAULT"))
    with pytest.raises(ValueError, match="exactly one of name"):
        TransferClassifier(num_classes=3, backbone={"name": "smallcnn", "class_path": TINY})


def test_a_weights_file_of_the_module_loads_and_a_mismatching_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = TinyNet(width=4)
    torch.save(saved.state_dict(), tmp_path / "tiny.pth")
    caplog.set_level(logging.INFO)
    model = TransferClassifier(num_classes=3, backbone=own(init_args={"width": 4}, weights=str(tmp_path / "tiny.pth")))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    assert f"backbone {TINY}: loaded 11 tensors" in caplog.text and "dropped nothing" in caplog.text
    assert model.hparams["weights"] == str(tmp_path / "tiny.pth") and "weights" not in model.hparams["backbone"]

    torch.save(TinyNet(width=6).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=f"weights file .*wide.pth' does not fit backbone '{TINY}'"):
        TransferClassifier(num_classes=3, backbone=own(init_args={"width": 4}), weights=str(tmp_path / "wide.pth"))


def test_a_lit_transfer_checkpoint_of_another_backbone_is_refused_as_weights(tmp_path: Path) -> None:
    model = TransferClassifier(num_classes=3, backbone=own(init_args={"width": 4}))
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save(ckpt, tmp_path / "own.ckpt")
    again = TransferClassifier(num_classes=3, backbone=own(init_args={"width": 4}, weights=str(tmp_path / "own.ckpt")))
    assert torch.equal(again.backbone.proj.weight, model.backbone.proj.weight)
    with pytest.raises(ValueError, match=f"holds a '{TINY}' backbone, not 'smallcnn'"):
        TransferClassifier(num_classes=3, backbone="smallcnn", weights=str(tmp_path / "own.ckpt"))


def test_freeze_stages_are_the_module_children() -> None:
    model = TransferClassifier(num_classes=3, backbone=own(), freeze=2, unfreeze_milestones=[1, 2])
    assert [s for s, _ in stage_parameters(model.backbone)] == ["stem", "block", "proj"]
    assert model.frozen == {n for n, _ in model.backbone.named_parameters() if n.startswith(("stem.", "block."))}
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if n.startswith("stem."))
    thawed = frozen_at_epoch(model.backbone, model.initial_frozen, model.milestones, 1)
    assert thawed == {n for n, _ in model.backbone.named_parameters() if n.startswith("stem.")}  # top stage first
    model.train()
    assert not model.backbone.stem[1].training  # the frozen BatchNorm stays in eval mode


# --- the grouped value ----------------------------------------------------------------------------------------------


def test_as_spec_merges_the_name_and_the_flat_flags() -> None:
    assert as_spec("resnet50", "DEFAULT") == BackboneSpec(name="resnet50", weights="DEFAULT")
    assert as_spec({"name": "resnet50", "weights": "DEFAULT"}) == as_spec("resnet50", "DEFAULT")
    assert as_spec({"name": "resnet50", "weights": "DEFAULT"}, "DEFAULT").weights == "DEFAULT"  # the same: fine
    assert backbone_hparams(as_spec({"name": "smallcnn", "weights": "w.pth"})) == ("smallcnn", "w.pth", None)
    stored = backbone_hparams(as_spec(own(init_args={"width": 4}), "w.pth", "positional"))
    assert stored == ({"class_path": TINY, "init_args": {"width": 4}, "input_size": 224}, "w.pth", "positional")
    with pytest.raises(ValueError, match=r"model\.backbone\.weights_map=.positional. and model\.weights_map="):
        as_spec(own(weights_map="positional"), "w.pth", {"strip_prefix": "net."})
    with pytest.raises(ValueError, match="init_args and input_size belong to a class_path"):
        as_spec({"name": "smallcnn", "input_size": 64})
    with pytest.raises(ValueError, match="plain values"):
        as_spec(own(init_args={"act": torch.nn.ReLU}))


def test_a_name_given_as_a_spec_is_stored_as_the_plain_name(tmp_path: Path) -> None:
    model = TransferClassifier(num_classes=3, backbone={"name": "smallcnn"})
    assert model.hparams["backbone"] == "smallcnn" and model.backbone_name == "smallcnn"
    assert TransferClassifier(num_classes=3, backbone="smallcnn").hparams["backbone"] == "smallcnn"


def test_display_identity() -> None:
    assert backbone_identity("resnet50") == "resnet50"
    assert backbone_identity("timm/convnext_tiny") == "timm/convnext_tiny"
    assert backbone_identity(own("my_pkg.MyNet", init_args={"width": 16})) == "my_pkg.MyNet"
    assert backbone_identity(BackboneSpec(class_path="my_pkg.MyNet")) == "my_pkg.MyNet"
