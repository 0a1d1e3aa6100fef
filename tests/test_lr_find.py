"""``lr-find``: Lightning's learning-rate range test on a fit config's model, data and optimizer."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import tiny_args

from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier

MIN_LR, MAX_LR = 1e-6, 0.5


def lr_find_args(root: Path, *extra: str) -> list[str]:
    limits = ["--min_lr", str(MIN_LR), "--max_lr", str(MAX_LR)]
    return ["lr-find", *tiny_args(root), "--num_training", "20", *limits, *extra]


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


def suggestion(printed: str) -> float:
    found = re.search(r"suggested learning rate (\S+) ", printed)
    assert found, printed
    return float(found.group(1))


def scalars(folder: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(folder))
    events.Reload()
    assert tag in events.Tags()["scalars"], events.Tags()
    return [e.value for e in events.Scalars(tag)]


@pytest.fixture
def optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[float]]]:
    """Every optimizer step of the model: the optimizer's class and the learning rate of each parameter group."""
    steps: list[tuple[str, list[float]]] = []
    original = TransferClassifier.on_before_optimizer_step

    def spy(self: TransferClassifier, optimizer: torch.optim.Optimizer) -> None:
        steps.append((type(optimizer).__name__, [float(g["lr"]) for g in optimizer.param_groups]))
        original(self, optimizer)

    monkeypatch.setattr(TransferClassifier, "on_before_optimizer_step", spy)
    return steps


def test_lr_find_suggests_plots_and_leaves_no_checkpoint(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str], optimizer_steps: list[Any]
) -> None:
    main(lr_find_args(image_tree))
    printed = capsys.readouterr().out
    lr = suggestion(printed)
    assert MIN_LR <= lr <= MAX_LR
    experiment = in_tmp / "runs" / "tiny"
    png = experiment / "lr_find.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 100
    assert str(png.relative_to(in_tmp)) in printed
    tried = scalars(experiment / "lr_find", "lr_find/lr")
    losses = scalars(experiment / "lr_find", "lr_find/loss")
    assert len(tried) == len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert tried[0] == pytest.approx(MIN_LR, rel=1e-3) and tried[-1] > 1e4 * tried[0]
    assert scalars(experiment / "lr_find", "lr_find/suggestion") == [pytest.approx(lr, rel=1e-2)]
    events = EventAccumulator(str(experiment / "lr_find"))
    events.Reload()
    assert "lr_find/plot" in events.Tags()["images"]
    # Lightning's temporary checkpoint is gone, and no run folder or config was added to the experiment
    assert not list(in_tmp.rglob(".lr_find_*.ckpt")) and not list(in_tmp.rglob("*.ckpt"))
    assert sorted(p.name for p in experiment.iterdir()) == ["lr_find", "lr_find.png"]
    assert not list(in_tmp.rglob("config.yaml"))


def test_the_tried_learning_rates_reach_the_configs_optimizer(
    image_tree: Path, in_tmp: Path, optimizer_steps: list[tuple[str, list[float]]]
) -> None:
    main(lr_find_args(image_tree, "--optimizer", "SGD", "--optimizer.lr", "0.3"))
    tried = scalars(in_tmp / "runs" / "tiny" / "lr_find", "lr_find/lr")
    assert len(optimizer_steps) == len(tried) == 20
    assert {name for name, _ in optimizer_steps} == {"SGD"}  # the config's optimizer, not a default one
    for (_, groups), lr in zip(optimizer_steps, tried, strict=True):
        assert groups and all(g == pytest.approx(lr, rel=1e-6) for g in groups)  # every group steps at that lr
    assert 0.3 not in {g for _, groups in optimizer_steps for g in groups}  # the config's lr is replaced


def test_an_existing_plot_is_never_overwritten(image_tree: Path, in_tmp: Path) -> None:
    experiment = in_tmp / "runs" / "tiny"
    experiment.mkdir(parents=True)
    mine = experiment / "lr_find.png"
    mine.write_bytes(b"the user's file")
    main(lr_find_args(image_tree))
    assert mine.read_bytes() == b"the user's file"
    assert (experiment / "lr_find_1.png").is_file()
    assert scalars(experiment / "lr_find_1", "lr_find/loss")
    assert not (experiment / "lr_find").exists()
    out = in_tmp / "plots" / "mine.png"
    main(lr_find_args(image_tree, "--out", str(out)))
    assert out.is_file() and scalars(out.with_suffix(""), "lr_find/lr")


def test_a_config_error_exits_2_with_one_line(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(lr_find_args(image_tree, "--model.init_args.no_such_key", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_key" in err and len(err.splitlines()) == 1, err
    assert exit_code(lr_find_args(image_tree, "--min_lr", "1", "--max_lr", "0.1")) == 2
    err = capsys.readouterr().err.strip()
    assert "--min_lr" in err and len(err.splitlines()) == 1, err
    assert not (in_tmp / "runs").exists()
