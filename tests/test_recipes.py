"""``--recipe``: named starting settings that every config file and flag overrides; and ``--optimizer.lr auto``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import run_dir, tiny_args

from lit_transfer.cli import main
from lit_transfer.cli.recipes import RECIPES, requested_recipe, with_recipe
from lit_transfer.commands.lr_find import _auto_lr_flag
from lit_transfer.models.schedules import warmup_cosine


def printed_config(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_print_config_shows_what_each_recipe_expands_to(
    name: str, image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = printed_config(capsys, ["fit", *tiny_args(image_tree), "--recipe", name, "--print_config"])
    assert config["recipe"] == name
    for key, value in RECIPES[name]["model"]["init_args"].items():
        assert config["model"]["init_args"][key] == value, key
    assert config["optimizer"]["class_path"] == RECIPES[name]["optimizer"]["class_path"]
    for key, value in RECIPES[name]["optimizer"]["init_args"].items():
        assert config["optimizer"]["init_args"][key] == value, key
    for key, value in RECIPES[name].get("data", {}).get("init_args", {}).items():
        assert config["data"]["init_args"][key] == value, key
    assert config["experiment"] == "tiny"  # the recipe's settings are no config file that names experiments


def test_config_files_and_flags_override_the_recipe(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = in_tmp / "probe.yaml"
    own.write_text("recipe: linear_probe\nmodel:\n  init_args:\n    freeze: 1\n", encoding="utf-8")
    argv = ["fit", *tiny_args(image_tree), "--config", str(own), "--optimizer.lr", "0.05", "--print_config"]
    config = printed_config(capsys, argv)
    assert config["recipe"] == "linear_probe"  # from the file
    assert config["model"]["init_args"]["freeze"] == 1  # the file over the recipe
    assert config["optimizer"]["init_args"]["lr"] == 0.05  # a flag over the recipe
    assert config["optimizer"]["init_args"]["weight_decay"] == 0.0001  # the rest is the recipe's
    assert config["data"]["init_args"]["augmentation"] == "none"
    assert config["model"]["init_args"]["cosine"] is True


def test_the_last_recipe_named_wins_and_expansion_is_idempotent(tmp_path: Path) -> None:
    own = tmp_path / "x.yaml"
    own.write_text("recipe: full\n", encoding="utf-8")
    assert requested_recipe(["fit", "--config", str(own)]) == "full"
    assert requested_recipe(["fit", "--config", str(own), "--recipe", "fine_tune"]) == "fine_tune"
    assert requested_recipe(["fit", "--recipe=fine_tune", "--config", str(own)]) == "full"
    assert requested_recipe(["fit", "--recipe", "null"]) is None
    once = with_recipe(["fit", "--recipe", "full"], {"fit": None})
    assert once[:2] == ["fit", "--config"] and with_recipe(once, {"fit": None}) == once


def test_an_unknown_recipe_is_a_configuration_error(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["fit", *tiny_args(image_tree), "--recipe", "finetune"]) == 2
    err = capsys.readouterr().err
    assert "finetune" in err and "fine_tune" in err and "linear_probe" in err


def test_restarted_schedule_step_by_step() -> None:
    """Two phases of 6 and 4 steps, warm-up 2: each phase ramps up from the bottom and decays to its own end."""
    factor = warmup_cosine(2, 10, True, restarts=[6])
    got = [factor(s) for s in range(10)]
    first = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    second = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 2)) for k in range(2)]
    assert got == pytest.approx(first + second)
    assert [warmup_cosine(2, 10, True)(s) for s in range(10)][6] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def lr_per_step(folder: Path, tag: str = "lr-AdamW/head") -> dict[int, float]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_fine_tune_recipe_trains_the_head_then_everything_on_a_restarted_cycle(
    image_tree: Path, in_tmp: Path
) -> None:
    argv = ["fit", *tiny_args(image_tree, epochs=2), "--recipe", "fine_tune", "--data.augmentation", "none"]
    main(argv)
    run = run_dir(in_tmp)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["unfreeze_at_epoch"] == 1
    # LearningRateMonitor logs each epoch's first lr: the second epoch starts its own warm-up at the same low rate
    lrs = sorted(lr_per_step(run).items())
    assert len(lrs) == 2
    assert lrs[1][1] == pytest.approx(lrs[0][1])
    assert lrs[0][1] < RECIPES["fine_tune"]["optimizer"]["init_args"]["lr"]
    groups = [g for g in state["optimizer_states"][0]["param_groups"] if str(g.get("name", "")).startswith("back")]
    assert len(groups) > 1  # layer_decay: one group per backbone stage
    assert len({round(g["initial_lr"], 12) for g in groups}) == len(groups)


def test_lr_auto_fits_at_the_range_tests_suggestion_and_resume_keeps_it(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [*tiny_args(image_tree), "--optimizer", "SGD"]
    main(["lr-find", *base, "--num_training", "100"])
    alone = float(capsys.readouterr().out.split("suggested learning rate ")[1].split()[0])
    main(["fit", *base, "--optimizer.lr", "auto"])
    out = capsys.readouterr().out
    assert "--optimizer.lr auto is" in out
    saved = yaml.safe_load((run_dir(in_tmp) / "config.yaml").read_text(encoding="utf-8"))
    lr = saved["optimizer"]["init_args"]["lr"]
    assert f"{lr:.3g}" == f"{alone:.3g}"  # the same search on the same seed, data and model
    state = torch.load(run_dir(in_tmp) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {g["lr"] for g in state["optimizer_states"][0]["param_groups"]} == {lr}
    pngs = sorted((in_tmp / "runs" / "tiny").glob("lr_find*.png"))
    main(["fit", *tiny_args(image_tree, epochs=2), "--optimizer", "SGD", "--optimizer.lr=auto", "--ckpt_path", "last"])
    assert "resuming with the checkpoint's learning rate" in capsys.readouterr().out
    assert sorted((in_tmp / "runs" / "tiny").glob("lr_find*.png")) == pngs  # no second search
    resumed = torch.load(run_dir(in_tmp) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["hyper_parameters"]["optimizer"]["init_args"]["lr"] == lr


def test_lr_auto_is_refused_under_an_external_launcher(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert exit_code(["fit", *tiny_args(image_tree), "--optimizer.lr", "auto"]) == 2
    assert "lr-find" in capsys.readouterr().err


def test_auto_lr_flag_spellings() -> None:
    assert _auto_lr_flag(["--a", "1", "--optimizer.lr", "auto", "--b"]) == (["--a", "1", "--b"], 2, "--optimizer.lr")
    assert _auto_lr_flag(["--optimizer.init_args.lr=auto"]) == ([], 0, "--optimizer.init_args.lr")
    assert _auto_lr_flag(["--optimizer.lr", "0.1"])[1] is None
