"""Configuration mistakes end in one or two lines naming the key or file and what is valid, with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from lit_transfer.cli import main
from lit_transfer.config_errors import explain


def args_for(root: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "32",
        "--data.num_workers", "0",  # these runs stop before any batch is loaded
        "--model", "TransferClassifier", "--model.backbone", "smallcnn", "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu", "--experiment", "err", *extra,
    ]  # fmt: skip


def config_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; it must exit 2 with a short message (no usage, no traceback, no namespace dump)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    message = [line for line in err.splitlines() if line.startswith("lit_transfer: configuration error:")]
    assert len(message) == 1, err
    assert "usage:" not in err and "Traceback" not in err and "Namespace(" not in err and "Union" not in err
    assert len(message[0]) < 700
    return message[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--model.backbone", "resnet5O"), ["unknown backbone 'resnet5O'", "resnet50"]),
        (("--data.init_args.imagesize", "32"), ["data.init_args.imagesize", "did you mean 'image_size'"]),
        (("--model.init_args.freez", "backbone"), ["model.init_args.freez", "did you mean 'freeze'"]),
        (("--trainer.max_epohcs", "2"), ["--trainer.max_epohcs", "did you mean '--trainer.max_epochs'"]),
        (("--data.init_args.image_size", "big"), ["data.init_args.image_size", "int", "big"]),
        (("--model.class_weights", "auto", "--data.sampler", "balanced"), ["class_weights: auto", "sampler: balanced"]),
        (("--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2", "--model.cosine", "true"),
         ["--lr_scheduler StepLR", "cosine"]),
    ],
)  # fmt: skip
def test_mistakes_are_named_in_one_line(
    extra: tuple[str, ...], expected: list[str], image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = config_error(["fit", *args_for(image_tree, *extra)], capsys)
    for text in expected:
        assert text in message
    assert not (in_tmp / "runs").exists()  # nothing started


def test_a_checkpoint_of_other_classes_and_a_finished_run(
    image_tree: Path, tree_factory, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *args_for(image_tree, "--trainer.enable_progress_bar", "false")])
    ckpt = str(in_tmp / "runs/err/version_0/checkpoints/last.ckpt")
    other = tree_factory("other", classes=("red", "green", "blue", "yellow"), per_class=4)
    message = config_error(["validate", *args_for(other), "--ckpt_path", ckpt], capsys)
    assert "trained on classes ['blue', 'green', 'red']" in message and "yellow" in message
    before = sorted((in_tmp / "runs/err").iterdir())
    message = config_error(["fit", *args_for(image_tree, epochs=1), "--ckpt_path", "last"], capsys)
    assert "already trained 1 epochs" in message and "--trainer.max_epochs" in message
    assert sorted((in_tmp / "runs/err").iterdir()) == before  # refused before any run folder was made


def test_offline_named_weights_say_which_and_what_to_do(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from urllib.error import URLError

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    message = config_error(["fit", *args_for(image_tree, "--model.backbone", "resnet18", "--model.weights",
                                             "IMAGENET1K_V1")], capsys)  # fmt: skip
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "https://download.pytorch.org/" in message
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in message and "null" in message


def test_explain_keeps_the_sentence_of_an_unknown_message() -> None:
    raw = 'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n    - it broke\n'
    assert explain(raw) == "model: it broke"


def test_a_checkpoint_cannot_choose_code_to_import(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = in_tmp / "imported.txt"
    (in_tmp / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(in_tmp))  # as `python -m lit_transfer` run from this folder
    monkeypatch.delitem(__import__("sys").modules, "evil", raising=False)
    ckpt = in_tmp / "shipped.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0,
                "hyper_parameters": {"_class_path": "evil.Model", "num_classes": 3}}, ckpt)  # fmt: skip
    for command in ("fit", "validate"):
        message = config_error([command, *args_for(image_tree), "--ckpt_path", str(ckpt)], capsys)
        assert not marker.exists(), f"{command} imported evil.py"
        assert "evil.Model" in message and "not a TransferClassifier that lit_transfer knows" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(ckpt)])
    assert exit_info.value.code == 2 and "evil.Model" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--optimizer.lr", "-1"), ["lr=-1", "positive"]),
        (("--data.num_workers", "-1"), ["data.num_workers=-1"]),
        (("--checkpoint.mode", "maximum"), ["checkpoint.mode", "maximum", "max"]),
        (("--model.label_smoothing", "2"), ["model.label_smoothing=2", "[0, 1)"]),
        (("--experiment", "x" * 300), ["--experiment", "too long"]),
        (("--checkpoint.monitor", "val_accuracy"), ["'val_accuracy'", "did you mean 'val_acc'", "val_f1"]),
        (("--data.val_fraction", "0"), ["the val split is empty", "val_fraction > 0"]),
    ],
)  # fmt: skip
def test_bad_values_stop_before_training(
    extra: tuple[str, ...], expected: list[str], image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = config_error(["fit", *args_for(image_tree), *extra], capsys)
    for text in expected:
        assert text in message, message
    assert not list(in_tmp.glob("runs/*/version_*/checkpoints/*.ckpt"))  # nothing trained


def test_an_accelerator_this_machine_lacks(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch.accelerators import CUDAAccelerator

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    message = config_error(["fit", *args_for(image_tree), "--trainer.accelerator", "gpu"], capsys)
    assert "gpu" in message.lower() or "cuda" in message.lower()


def test_freeze_stages_and_the_default_optimizer_lr_on_the_command_line(image_tree: Path, in_tmp: Path) -> None:
    from lit_transfer.cli import LitTransferCLI

    cli = LitTransferCLI([*args_for(image_tree), "--model.freeze", "2", "--optimizer.lr", "0.01"], run=False)
    assert cli.model.hparams.freeze == 2 and cli.model.initial_frozen
    assert cli.model.hparams.optimizer["class_path"] == "torch.optim.AdamW"
    assert cli.model.hparams.optimizer["init_args"]["lr"] == 0.01
    assert cli.model.hparams.optimizer["init_args"]["weight_decay"] == 0.01


def test_a_split_the_checkpoint_lacks(image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", *args_for(image_tree, "--trainer.enable_progress_bar", "false")])
    ckpt = str(in_tmp / "runs/err/version_0/checkpoints/last.ckpt")
    message = config_error(["test", *args_for(image_tree, "--data.test_fraction", "0.3"), "--ckpt_path", ckpt], capsys)
    assert "trained with no test images" in message and "the split changed" in message


def test_files_and_folders_are_named(
    image_tree: Path, tree_factory, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "notes.ckpt").write_text("hello\n")
    message = config_error(["validate", *args_for(image_tree), "--ckpt_path", "notes.ckpt"], capsys)
    assert "'notes.ckpt'" in message and "not a PyTorch checkpoint file" in message
    (in_tmp / "ckpts").mkdir()
    message = config_error(["validate", *args_for(image_tree), "--ckpt_path", "ckpts"], capsys)
    assert "'ckpts' is a folder" in message and "last.ckpt" in message
    (in_tmp / "empty.yaml").write_text("")
    message = config_error(["fit", "--config", "empty.yaml", *args_for(image_tree)], capsys)
    assert "'empty.yaml' is empty" in message
    one = tree_factory("one", classes=("red",), per_class=2)
    message = config_error(["fit", *args_for(one)], capsys)
    assert f"data.root {str(one)!r} has one class folder ('red')" in message and "at least two" in message
