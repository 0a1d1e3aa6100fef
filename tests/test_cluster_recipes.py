"""The SLURM script and the trainer presets: valid shell, and the command line they build parses."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_transfer.cli import main

ROOT = Path(__file__).parents[1]
SBATCH = ROOT / "scripts/slurm/train.sbatch"


def test_sbatch_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    assert "#SBATCH --signal=SIGUSR1@" in text and "#SBATCH --requeue" in text and "srun" in text


def test_sbatch_command_line_parses(tree_factory, tmp_path: Path) -> None:
    """Run the script with srun replaced by a shim that prints the config instead of training."""
    shim = tmp_path / "bin"
    shim.mkdir()
    # srun → run the command with --print_config appended, as a SLURM task would run it
    (shim / "srun").write_text('#!/usr/bin/env bash\nexec "$@" --print_config\n')
    (shim / "srun").chmod(0o755)
    root = tree_factory("data", per_class=4)
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_PER_NODE": "a100:4",
        "SLURM_CPUS_PER_TASK": "6",
    }
    config = ROOT / "configs/resnet34_finetune.yaml"
    args = ["--data.init_args.train_dir", str(root), "--data.init_args.val_dir", "null", "--data.init_args.test_dir",
            "null", "--model.init_args.weights", "null"]  # fmt: skip
    result = subprocess.run(
        ["bash", str(SBATCH), str(config), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:] + shlex.join(args)
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["num_nodes"] == 2 and str(printed["trainer"]["devices"]) == "4"
    assert printed["trainer"]["strategy"] == "ddp" and printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["experiment"] == "resnet34_finetune-job4242"
    assert printed["data"]["init_args"]["num_workers"] == 6


def test_trainer_presets_hold_no_class_choices() -> None:
    """Presets stack on any experiment config: they set options, never the model or data class."""
    for preset in (ROOT / "configs/trainer").glob("*.yaml"):
        spec = yaml.safe_load(preset.read_text())
        assert set(spec) <= {"trainer", "data", "model"}, preset
        for group in ("data", "model"):
            assert set(spec.get(group, {})) <= {"init_args"}, f"{preset}: {group} must only set init_args"


@pytest.mark.parametrize("experiment", ["quickstart", "rotnet_pretrain", "caltech101_vgg16_frozen"])
def test_gpu_fast_preset_stacks_on_experiment_configs(experiment: str, capsys: pytest.CaptureFixture) -> None:
    config = ROOT / f"configs/{experiment}.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--config", str(ROOT / "configs/trainer/gpu_fast.yaml"),
              "--print_config"])  # fmt: skip
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "bf16-mixed" and printed["trainer"]["accelerator"] == "gpu"
    assert printed["model"]["init_args"]["channels_last"] is True and printed["model"]["init_args"]["compile"] is True
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]
