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
