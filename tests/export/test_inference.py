from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_checkpoints import Trained
from onnx import TensorProto, helper
from PIL import Image
from torchvision.transforms import v2

from lit_transfer import inference
from lit_transfer.data.images import load_rgb, to_rgb
from lit_transfer.data.transforms import eval_transform
from lit_transfer.export import export_checkpoint
from lit_transfer.inference import load_exported
from lit_transfer.models import TransferClassifier

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")
INFERENCE_FILE = Path(inference.__file__)


@pytest.fixture(scope="module")
def exported(smallcnn: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    return {fmt: export_checkpoint(smallcnn.ckpt, fmt, folder).path for fmt in ("onnx", "torchscript")}  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predictions_match_the_lightning_model(smallcnn: Trained, exported: dict[str, Path], fmt: str) -> None:
    model = TransferClassifier.load_from_checkpoint(smallcnn.ckpt, map_location="cpu", weights_only=True).eval()
    batch = torch.stack([eval_transform(32)(load_rgb(path)) for path in smallcnn.images])
    with torch.no_grad():
        expected = model(batch).softmax(dim=1).numpy()

    predictor = load_exported(exported[fmt])
    assert predictor.class_names == model.class_names == ["blue", "green", "red"]
    results = predictor.predict(smallcnn.images, top_k=3, batch_size=7)
    assert [r["path"] for r in results] == [str(p) for p in smallcnn.images]
    assert [r["prediction"] for r in results] == [model.class_names[i] for i in expected.argmax(axis=1)]
    got = np.zeros_like(expected)
    for row, result in zip(got, results, strict=True):
        for entry in result["top_k"]:
            row[entry["index"]] = entry["probability"]
    # PIL's resize and torchvision's uint8 resize differ by at most one grey level on a few pixels
    assert np.abs(got - expected).max() < 0.02
    assert all(r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] >= r["top_k"][2]["probability"]
               for r in results)  # fmt: skip
    assert all(r["confidence"] == r["top_k"][0]["probability"] and "angle" not in r for r in results)
    accuracy = np.mean([r["prediction"] == Path(r["path"]).parent.name for r in results])
    assert accuracy > 0.5  # the colour classes are easy: the model (and so the export) learned something


def odd_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (45, 61, 4), dtype=np.uint8)
    pixels[:10, :, 3] = 0  # fully transparent band: composited on white, never the hidden RGB
    Image.fromarray(pixels, "RGBA").save(folder / "rgba.png")
    Image.fromarray(pixels[..., 0], "L").save(folder / "grey.png")
    deep = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    assert deep.mode == "I;16"
    deep.save(folder / "deep.png")
    palette = Image.fromarray(pixels[..., :3], "RGB").quantize(16)
    palette.info["transparency"] = 3
    palette.save(folder / "palette.png", transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: must be turned upright before resizing
    Image.fromarray(pixels[:, :30, :3], "RGB").save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(pixels[:20, :25, :3], "RGB").save(folder / "small.png")
    Image.fromarray(rng.integers(0, 256, (300, 207, 3), dtype=np.uint8)).save(folder / "large.png")
    return sorted(folder.iterdir())


def test_preprocessing_follows_the_eval_pipeline(tmp_path: Path) -> None:
    for path in odd_images(tmp_path):
        upright = load_rgb(path)
        assert np.array_equal(np.asarray(inference.load_image(path)), np.asarray(upright)), path
        with Image.open(path) as img:
            assert np.array_equal(np.asarray(inference.to_rgb(img)), np.asarray(to_rgb(img))), path
        for size in (32, 224):
            ours = inference.preprocess(path, round(size / 0.875), size)
            theirs = eval_transform(size)(upright).numpy()
            assert ours.shape == theirs.shape == (3, size, size) and ours.dtype == np.uint8
            assert np.abs(ours.astype(int) - theirs).max() <= 1, (path, size)
        padded = v2.Compose([v2.PILToTensor(), v2.Resize(27, antialias=True), v2.CenterCrop(32)])(upright).numpy()
        assert np.abs(inference.preprocess(path, 27, 32).astype(int) - padded).max() <= 1  # crop larger than image
    rotated = inference.load_image(tmp_path / "rotated.jpg")
    assert rotated.size == (45, 30)


def test_standalone_file_needs_neither_lightning_nor_torch(smallcnn: Trained, exported: dict[str, Path]) -> None:
    # lit_transfer/__init__.py imports Lightning, so `import lit_transfer.inference` would load it whatever
    # inference.py does; loading the file on its own (as a user who copies it beside a model does) tests the file.
    script = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("standalone_inference", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
heavy = ("torch", "torchvision", "lightning", "pytorch_lightning", "lit_transfer", "onnxruntime")
at_import = [name for name in heavy if name in sys.modules]
result = module.load_exported(sys.argv[2]).predict(sys.argv[3:], top_k=2)
module.main([sys.argv[2], sys.argv[3], "--top_k", "1"])
print(json.dumps({"at_import": at_import, "after": [name for name in heavy if name in sys.modules], "result": result}))
"""
    images = [str(p) for p in smallcnn.images[:3]]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(INFERENCE_FILE), str(exported["onnx"]), *images],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cli_line, report_line = proc.stdout.strip().splitlines()[-2:]
    report = json.loads(report_line)
    assert report["at_import"] == [] and report["after"] == ["onnxruntime"]
    assert [r["path"] for r in report["result"]] == images and len(report["result"][0]["top_k"]) == 2
    from_cli = json.loads(cli_line)
    assert from_cli["path"] == images[0] and from_cli["prediction"] == report["result"][0]["prediction"]
    assert len(from_cli["top_k"]) == 1


def test_predict_inputs_and_errors(smallcnn: Trained, exported: dict[str, Path], tmp_path: Path) -> None:
    predictor = load_exported(exported["onnx"])
    assert predictor.image_size == 32 and predictor.resize_size == 37 and predictor.class_angles is None
    assert predictor.metadata["backbone"] == "smallcnn" and predictor.metadata["input"]["dtype"] == "uint8"
    (single,) = predictor.predict(str(smallcnn.images[0]), top_k=10)
    assert len(single["top_k"]) == 3 and sum(t["probability"] for t in single["top_k"]) == pytest.approx(1, abs=1e-5)
    with Image.open(smallcnn.images[0]) as img:
        (from_pil,) = predictor.predict(img.copy())
    assert from_pil["path"] is None and from_pil["top_k"] == single["top_k"]
    assert predictor.predict([]) == []

    with pytest.raises(FileNotFoundError, match=r"nowhere\.onnx"):
        load_exported(tmp_path / "nowhere.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 definitely not a model")
    with pytest.raises(ValueError, match=r"garbage\.onnx"):
        load_exported(garbage)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(plain))
    with pytest.raises(ValueError, match="not a lit_transfer export"):
        load_exported(plain)
