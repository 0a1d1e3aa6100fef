"""One builder of lit_transfer's default Trainer: the CLI uses its pieces, the benchmarks ``build_trainer``.

The benchmark scripts are checked on the CPU only (``--help``, flag parsing, the result tables and JSON); they are
never run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_transfer.callbacks import FeatureCache
from lit_transfer.callbacks.checkpoint import AsyncAtomicCheckpointIO
from lit_transfer.cli import LitTransferCLI
from lit_transfer.trainer_defaults import CHECKPOINT_DEFAULTS, build_trainer, default_callbacks, with_checkpoint_io

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def names(callbacks: list) -> list[str]:
    return [type(c).__name__ for c in callbacks]


def test_build_trainer_is_the_trainer_the_cli_builds(image_tree: Path, in_tmp: Path) -> None:
    args = [
        "--data", "ImageFolderDataModule", "--data.root", str(image_tree), "--data.num_workers", "0",
        "--model", "TransferClassifier", "--model.backbone", "smallcnn", "--trainer.accelerator", "cpu",
        "--experiment", "same",
    ]  # fmt: skip
    cli = LitTransferCLI(args=args, run=False)
    built = build_trainer(in_tmp / "runs", "same", accelerator="cpu")
    # the CLI adds its FeatureCache (cache_features) and LightningCLI's SaveConfigCallback; the rest is the same
    cli_only = {FeatureCache.__name__, "SaveConfigCallback"}
    assert [n for n in names(cli.trainer.callbacks) if n not in cli_only] == names(built.callbacks)
    for trainer in (cli.trainer, built):
        checkpoint = trainer.checkpoint_callback
        assert {k: getattr(checkpoint, k) for k in ("monitor", "mode", "save_last", "filename")} == {
            k: CHECKPOINT_DEFAULTS[k] for k in ("monitor", "mode", "save_last", "filename")
        }
        assert isinstance(trainer.strategy.checkpoint_io, AsyncAtomicCheckpointIO)
        assert Path(trainer.logger.save_dir).resolve() == (in_tmp / "runs").resolve()
        assert trainer.logger.name == "same"
        assert trainer._accelerator_connector.use_distributed_sampler is False


def test_default_callbacks_follow_seed_logger_and_progress_bar() -> None:
    always = ["PredictionWriter", "SigtermHandler", "UnreadableDataCheck"]
    assert names(default_callbacks(42)) == [
        *always,
        "EpochSeeder",
        "LearningRateMonitor",
        "RunSummary",
        "ThrottledProgressBar",
    ]
    assert names(default_callbacks(None, logger=False, progress_bar=False)) == always
    assert names(default_callbacks(False)) == [*always, "LearningRateMonitor", "RunSummary", "ThrottledProgressBar"]
    io = AsyncAtomicCheckpointIO()
    assert with_checkpoint_io([io]) is None
    assert names(with_checkpoint_io(None)) == ["AsyncAtomicCheckpointIO"]


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_benchmark_scripts_parse_flags_and_write_results_on_the_cpu(tmp_path: Path) -> None:
    for script in ("run.py", "gpu.py"):
        shown = run_script(str(BENCHMARKS / script), "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "--quick" in shown.stdout and "--only" in shown.stdout, shown.stderr
    # the GPU driver without a section: flags, settings, FLOP count, machine description, tables, markdown, JSON
    output = tmp_path / "gpu.json"
    done = run_script(str(BENCHMARKS / "gpu.py"), "--smoke", "--only", "--output", str(output), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--- markdown for benchmarks/RESULTS.md ---" in done.stdout
    written = json.loads(output.read_text())
    assert written["rows"] == [] and written["meta"]["smoke"] is True
    assert written["meta"]["settings"]["backbone"] == "resnet18" and written["meta"]["flops_per_image"] > 0
    # the tables and the markdown from rows the sections produce, without measuring anything
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import gpu
from gpu_common import rate_rows, ratio_rows
setup = gpu.build_setup(gpu.build_parser().parse_args(["--smoke", "--peak-tflops", "100"]))
setup.peak_tflops, setup.flops_per_image = 100.0, 1e9
rates = {"plain loop": [10.0, 12.0], "ours": [9.9, 12.0]}
rows = ratio_rows("G1 parity x (img/s)", rates, "plain loop", "cmd", 0.98)
rows += rate_rows("G1 parity x", rates, setup, "cmd")
gpu.print_table(rows)
print(gpu.markdown(rows, gpu.describe_machine(setup, "--peak-tflops"), setup))
"""
    done = run_script("-c", code, str(BENCHMARKS), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours / plain loop" in done.stdout
    assert "| G1 | parity x: ours ÷ plain loop (img/s) | **0.995** |" in done.stdout
    assert "0.98 ok" in done.stdout and "MFU" in done.stdout


def test_epoch_seeder_seeds_like_torch_manual_seed_and_every_available_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_transfer.callbacks import reproducibility

    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(0)
    reproducibility._seed_torch(1234, ())
    assert torch.equal(torch.rand(5), expected)  # the CPU stream is torch.manual_seed's

    seeded: list[tuple[str, int]] = []
    for name in ("cuda", "xpu", "mtia"):
        backend = getattr(torch, name)
        monkeypatch.setattr(backend, "manual_seed_all", lambda s, n=name: seeded.append((n, s)))
        monkeypatch.setattr(backend, "is_initialized", lambda: False)
        monkeypatch.setattr(backend, "is_available", lambda n=name: n == "cuda")  # a GPU not initialized yet
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    backends = reproducibility.device_backends()
    assert backends == (torch.cuda,)
    reproducibility._seed_torch(7, backends)
    assert seeded == [("cuda", 7)]  # queued for when CUDA initializes, as torch.manual_seed does; absent ones skipped
