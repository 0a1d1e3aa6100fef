from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_checkpoints import Trained
from PIL import Image

from lit_transfer import export
from lit_transfer.export import ExportModule, export_checkpoint, main

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")
ROOT = Path(__file__).resolve().parents[2]


def run_main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def onnx_metadata(path: Path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


def copy_ckpt(trained: Trained, tmp_path: Path) -> Path:
    return Path(shutil.copy(trained.ckpt, tmp_path / "model.ckpt"))


def test_onnx_export_carries_metadata_and_matches_pytorch(
    smallcnn: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exported" / "model.onnx"
    assert run_main(["--ckpt_path", str(smallcnn.ckpt), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = re.search(r"parity onnxruntime vs PyTorch .*logits (\S+), probabilities (\S+) .*: ok", printed)
    assert report is not None, printed
    assert float(report.group(1)) < 1e-4 and float(report.group(2)) < 1e-4
    assert f"wrote {out}" in printed

    saved = torch.load(smallcnn.ckpt, weights_only=True)["lit_transfer"]
    meta = onnx_metadata(out)
    assert meta["class_names"] == ["blue", "green", "red"] == saved["class_names"]
    assert meta["num_classes"] == 3 and meta["task"] == "classification" and meta["backbone"] == "smallcnn"
    assert meta["image_size"] == 32 and meta["resize_size"] == round(32 / 0.875) == 37
    assert meta["mean"] == pytest.approx(saved["mean"]) and meta["std"] == pytest.approx(saved["std"])
    assert meta["manifest_hash"] == saved["manifest_hash"] and meta["checkpoint"] == "last.ckpt"
    assert meta["outputs"] == ["logits", "probabilities"] and "class_angles" not in meta

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"
    assert image_input.shape == ["batch", 3, 32, 32]
    batch = np.random.default_rng(1).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    logits, probs = session.run(["logits", "probabilities"], {"images": batch})
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert np.allclose(torch.from_numpy(logits).softmax(1).numpy(), probs, atol=1e-6)


def test_torchscript_export_goes_beside_the_checkpoint_with_metadata(
    smallcnn: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = copy_ckpt(smallcnn, tmp_path)
    assert run_main(["--ckpt_path", str(ckpt), "--format", "torchscript"]) == 0
    out = tmp_path / "model.torchscript.pt"
    printed = capsys.readouterr().out
    assert "parity TorchScript vs PyTorch" in printed and ": ok" in printed and str(out) in printed
    extra = {"metadata.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["class_names"] == ["blue", "green", "red"] and meta["image_size"] == 32 and meta["resize_size"] == 37
    assert meta == onnx_metadata_of_fresh_export(ckpt, tmp_path)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    logits, probs = module(batch)
    assert logits.shape == probs.shape == (4, 3)


def onnx_metadata_of_fresh_export(ckpt: Path, tmp_path: Path) -> dict:
    result = export_checkpoint(ckpt, "onnx", tmp_path / "same.onnx")
    assert result.passed
    return onnx_metadata(result.path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_failure_exits_1_and_leaves_the_output_alone(
    smallcnn: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    forward = ExportModule.forward

    def drifted(self: ExportModule, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = forward(self, images)
        logits = logits + 1e-3 * torch.arange(logits.shape[1], dtype=logits.dtype)  # a small, silent export bug
        return logits, logits.softmax(dim=1)

    monkeypatch.setattr(ExportModule, "forward", drifted)
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    out.write_text("an earlier export")
    assert run_main(["--ckpt_path", str(smallcnn.ckpt), "--format", fmt, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert ": FAILED" in captured.out and "differs from PyTorch" in captured.err
    assert out.read_text() == "an earlier export"
    kept = tmp_path / ("model.parity_failed.onnx" if fmt == "onnx" else "model.parity_failed.torchscript.pt")
    assert kept.is_file() and str(kept) in captured.err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    monkeypatch.setattr(ExportModule, "forward", forward)
    assert run_main(["--ckpt_path", str(smallcnn.ckpt), "--format", fmt, "--out", str(out), "--tolerance", "1e-4"]) == 0


def test_an_export_with_a_fixed_batch_size_fails_parity(
    smallcnn: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_export = torch.onnx.export

    def fixed_batch(*args: object, **kwargs: object) -> object:
        return real_export(*args, **{**kwargs, "dynamic_axes": None})

    monkeypatch.setattr(torch.onnx, "export", fixed_batch)
    assert run_main(["--ckpt_path", str(smallcnn.ckpt), "--out", str(tmp_path / "fixed.onnx")]) == 1
    captured = capsys.readouterr()
    assert "fails on a batch of 1" in captured.out and ": FAILED" in captured.out and "fails on a batch" in captured.err
    assert not (tmp_path / "fixed.onnx").exists() and (tmp_path / "fixed.parity_failed.onnx").is_file()


def test_bad_checkpoints_exit_2_naming_the_file(
    smallcnn: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.ckpt"
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    no_state = tmp_path / "no_state.ckpt"
    torch.save({"epoch": 1}, no_state)
    pickled_code = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "x": Path("a")}, pickled_code)  # an arbitrary object: refused by weights_only
    ckpt = torch.load(smallcnn.ckpt, weights_only=True)
    hostile = tmp_path / "hostile.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "_class_path": "subprocess.Popen"}}, hostile)
    for path in (missing, garbage, no_state, pickled_code, hostile):
        assert run_main(["--ckpt_path", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err, err
    assert "not a TransferClassifier" in run_and_read(hostile, capsys)
    assert not list(tmp_path.glob("*.onnx"))


def run_and_read(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    run_main(["--ckpt_path", str(path)])
    return capsys.readouterr().err


def test_image_size_from_the_command_line_when_the_checkpoint_lacks_it(smallcnn: Trained, tmp_path: Path) -> None:
    ckpt = torch.load(smallcnn.ckpt, weights_only=True)
    del ckpt["lit_transfer"]
    bare = tmp_path / "bare.ckpt"
    torch.save(ckpt, bare)
    assert run_main(["--ckpt_path", str(bare)]) == 2
    assert run_main(["--ckpt_path", str(bare), "--image_size", "32", "--resize_size", "40"]) == 0
    meta = onnx_metadata(tmp_path / "bare.onnx")
    assert meta["image_size"] == 32 and meta["resize_size"] == 40 and meta["class_names"] == ["blue", "green", "red"]
    with pytest.raises(SystemExit) as bad:
        main(["--ckpt_path", str(bare), "--tolerance", "-1"])
    assert bad.value.code == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_resnet18_exports_within_tolerance(resnet18_ckpt: Path, tmp_path: Path, fmt: str) -> None:
    result = export_checkpoint(resnet18_ckpt, fmt, tmp_path)  # type: ignore[arg-type]
    print(f"resnet18 {fmt}: {result.max_abs_diff}")
    assert result.passed and result.path.parent == tmp_path and result.path.is_file()
    assert set(result.max_abs_diff) == {"logits", "probabilities"} and result.worst < 1e-4
    meta = result.metadata
    assert meta["backbone"] == "resnet18" and meta["input"]["shape"][1:] == [3, 32, 32]
    assert meta["mean"] == pytest.approx([0.3, 0.4, 0.5]) and meta["std"] == pytest.approx([0.2, 0.25, 0.3])


def test_rotnet_checkpoint_records_the_angle_of_each_class(rotnet_ckpt: Path, tmp_path: Path) -> None:
    from lit_transfer.data.rotation import source_size
    from lit_transfer.inference import load_exported

    result = export_checkpoint(rotnet_ckpt, "onnx", tmp_path / "rotnet.onnx")
    assert result.passed
    meta = onnx_metadata(result.path)
    assert meta["task"] == "rotation" and meta["model_class"].endswith("RotNetClassifier")
    assert meta["class_angles"] == [0, 45, 90, 135, 180, 225, 270, 315]
    assert meta["class_names"][1] == "45°" and meta["epoch"] == 3 and meta["manifest_hash"] == "0123456789abcdef"
    assert meta["resize_size"] == source_size(32, "safe", False) > 32  # the RotNet source square, not 32 / 0.875
    # a checkpoint without the data module's settings gets RotNetDataModule's defaults: safe (low-passed), crop
    assert meta["square"] == "crop" and meta["rotation"]["geometry"] == "safe" and meta["low_pass"]["outer"] == 0.75
    predictor = load_exported(result.path)
    assert predictor.class_angles == meta["class_angles"]
    (prediction,) = predictor.predict(Image.new("RGB", (60, 50), (90, 20, 200)), top_k=3)
    assert prediction["path"] is None and len(prediction["top_k"]) == 3
    assert prediction["angle"] == meta["class_angles"][prediction["index"]]


def test_module_runs_as_a_script(smallcnn: Trained, tmp_path: Path) -> None:
    ckpt = copy_ckpt(smallcnn, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lit_transfer.export", "--ckpt_path", str(ckpt), "--format", "torchscript"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "parity TorchScript vs PyTorch" in proc.stdout and (tmp_path / "model.torchscript.pt").is_file()
    assert "deprecated" not in proc.stderr  # torch's deprecation notices of the exporters are not the user's concern


def test_registered_subcommand(smallcnn: Trained, tmp_path: Path) -> None:
    from lit_transfer.cli import EXTRA_COMMANDS
    from lit_transfer.cli import main as cli_main

    if "export" not in EXTRA_COMMANDS:
        pytest.skip("`export` is not registered in lit_transfer.cli.EXTRA_COMMANDS yet")
    cli_main(["export", "--ckpt_path", str(smallcnn.ckpt), "--out", str(tmp_path / "cli.onnx")])
    assert onnx_metadata(tmp_path / "cli.onnx")["image_size"] == 32


def test_rebuilt_model_is_the_checkpoint(resnet18_ckpt: Path) -> None:
    ckpt = torch.load(resnet18_ckpt, weights_only=True)
    model = export.rebuild_model(ckpt)  # the conftest guard fails the test if the ImageNet weights were fetched
    assert not model.training and model.hparams.weights is None and model.hparams.backbone == "resnet18"
    state = model.state_dict()
    assert state.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())
    module = ExportModule(model)
    assert {name for name, _ in module.named_children()} == {"backbone", "head"}
