"""The command front: every command has --help listing its options, --config, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_transfer.cli import main
from lit_transfer.commands import COMMANDS

CONFIGS = Path(__file__).parents[1] / "configs"
# Each command's own options, as its --help must list them.
OPTIONS = {
    "stats": ["--config", "--data", "--out", "--experiment", "--runs_dir"],
    "audit-rotnet": ["--config", "--audit.images", "--audit.epochs", "--audit.small", "--audit.seed", "--data"],
    "clean-cache": ["--config", "--runs_dir", "--dir", "--dry_run", "--dry-run"],
    "export": ["--config", "--ckpt_path", "--format", "--out", "--tolerance", "--opset", "--image_size"],
    "backbones": ["list", "show", "--weights", "--image_size", "--json"],
    "runs": ["--config", "--runs_dir", "--sort", "--csv"],
    "lr-find": ["--config", "--min_lr", "--max_lr", "--num_training", "--out", "--model", "--data", "--trainer"],
}


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


def test_every_command_is_tested() -> None:
    assert set(OPTIONS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_help_lists_the_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([name, "--help"]) == 0
    printed = capsys.readouterr().out
    missing = [option for option in OPTIONS[name] if option not in printed]
    assert not missing, f"{name} --help does not list {missing}:\n{printed}"
    assert f"lit_transfer {name}" in printed  # its own usage line, not Lightning's


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_unknown_option_exits_2_naming_it(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [name, "--no_such_option", "1"]
    if name == "export":
        argv += ["--ckpt_path", "x.ckpt"]  # otherwise the missing required option is reported first
    if name == "audit-rotnet":
        argv += ["--config", str(CONFIGS / "rotnet_pretrain.yaml")]  # the audit's own settings need a data module
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--no_such_option" in err and len(err.splitlines()) == 1, err


def test_a_bad_value_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["clean-cache", "--dry_run", "maybe"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dry_run" in err and len(err.splitlines()) == 1, err
    assert exit_code(["export", "--ckpt_path", "x.ckpt", "--tolerance", "-1"]) == 2
    assert "tolerance" in capsys.readouterr().err


def test_config_file_sets_a_commands_options(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = in_tmp / "clean.yaml"
    config.write_text(yaml.safe_dump({"runs_dir": str(in_tmp / "elsewhere"), "dry_run": True}))
    main(["clean-cache", "--config", str(config)])
    assert f"no feature cache at {in_tmp / 'elsewhere' / 'feature_cache'}" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"no_such_key": 1}))
    assert exit_code(["clean-cache", "--config", str(config)]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_dry_run_alone_means_true(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in (["--dry-run"], ["--dry_run"], ["--dry-run=true"], ["--dry_run", "true"]):
        main(["clean-cache", *flag, "--runs_dir", "nothing_here"])
        assert "no feature cache at nothing_here" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["--help"]) == 0
    printed = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in printed
    for name in ["fit", "validate", "test", "predict", *COMMANDS]:
        assert f"    {name} " in printed, f"{name} missing from --help:\n{printed}"
    for command in COMMANDS.values():
        assert command.summary.split()[0] in printed


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_no_config_hints_at_one(subcommand: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([subcommand]) == 2
    err = capsys.readouterr().err.strip()
    assert "--config configs/<experiment>.yaml" in err and len(err.splitlines()) == 1, err
