"""Start-up work of ``python -m lit_transfer``: only the parser of the command run is built, no optional library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lit_transfer.cli import main
from lit_transfer.cli.app import TRAINER_COMMANDS, LitTransferCLI, requested_subcommand
from lit_transfer.commands import COMMANDS
from lit_transfer.core.lightning_private import option_strings, subcommand_parsers

# Libraries only some commands or callbacks use; building the CLI must not import them.
OPTIONAL = ("matplotlib", "sklearn", "pandas", "timm", "onnx", "onnxruntime", "lit_transfer.rotnet_audit")


class _Stop(Exception):
    pass


def full_parsers(args: list[str]) -> dict[str, bool]:
    """Every subcommand of the CLI's parser for ``args``, and whether its parser has the Trainer's options."""
    seen: dict[str, Any] = {}

    class Probe(LitTransferCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            seen.update(subcommand_parsers(parser))
            raise _Stop

    with pytest.raises(_Stop):
        Probe(args=args)
    return {name: "--trainer.max_epochs" in option_strings(p) for name, p in seen.items()}


def test_requested_subcommand_only_from_the_first_argument() -> None:
    names = LitTransferCLI.subcommands()
    assert requested_subcommand(["fit", "--config", "x.yaml"], names) == "fit"
    assert requested_subcommand(("test", "--help"), names) == "test"
    assert requested_subcommand(["--config", "x.yaml", "fit"], names) is None
    assert requested_subcommand(["--help"], names) is None
    assert requested_subcommand(["stats"], names) is None
    assert requested_subcommand({"fit": {}}, names) is None


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_only_the_named_commands_parser_is_built(command: str) -> None:
    built = full_parsers([command, "--help"])
    assert list(built) == [*TRAINER_COMMANDS, *COMMANDS]  # every command still listed, in the same order
    assert {name for name, full in built.items() if full} == {command}


@pytest.mark.parametrize("args", [["--help"], ["--config", "x.yaml", "fit"]])
def test_every_trainer_parser_is_built_when_the_command_comes_later(args: list[str]) -> None:
    built = full_parsers(args)
    assert {name for name, full in built.items() if full} == set(TRAINER_COMMANDS)


def test_an_evaluation_command_prints_its_own_config(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", "ImageFolderDataModule", "--data.root", str(image_tree), "--model", "TransferClassifier"]
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *args, "--model.backbone", "smallcnn", "--print_config"])
    assert exit_info.value.code in (0, None)
    shown = capsys.readouterr().out
    assert "ckpt_path:" in shown and "backbone: smallcnn" in shown
    assert "train_dataloaders" not in shown  # fit's own arguments


def test_fit_help_imports_no_optional_library() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['lit_transfer', 'fit', '--help']\n"
        "try:\n"
        "    runpy.run_module('lit_transfer', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', [m for m in {OPTIONAL!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--trainer.max_epochs" in done.stdout
    assert done.stdout.splitlines()[-1] == "LOADED []"
