"""The README documents every public argument; the demo builds real digit scans and compares two runs on them."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lit_transfer.data import BaseImageDataModule, Caltech101DataModule, ImageFolderDataModule, RotNetDataModule
from lit_transfer.demo import build_digits, compare, lite0_weights, read_result
from lit_transfer.demo import main as demo_main
from lit_transfer.models import TransferClassifier

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_documents_every_public_argument() -> None:
    # the data modules pass **kwargs on to BaseImageDataModule: its arguments are theirs too
    for cls in (TransferClassifier, BaseImageDataModule, ImageFolderDataModule, Caltech101DataModule, RotNetDataModule):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
                assert f"`{name}`" in README, f"README lacks {cls.__name__} argument {name!r}"
    for flag in ("--experiment", "--runs_dir", "--test_after_fit", "--optimizer", "--lr_scheduler", "--ckpt_path"):
        assert f"`{flag}`" in README


def test_readme_names_every_config() -> None:
    for config in (Path(__file__).parents[1] / "configs").glob("*.yaml"):
        assert f"configs/{config.name}" in README, f"README lacks a row for {config.name}"


def test_demo_digits_are_real_scans(tmp_path: Path) -> None:
    assert build_digits(tmp_path / "digits") == 1797
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert folders == [str(d) for d in range(10)]
    files = list((tmp_path / "digits").glob("*/*.png"))
    assert len(files) == 1797
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (32, 32) and img.min() == 0 and img.max() > 150  # ink on a blank background

    # the same digit class looks alike: mean images of two classes differ far more than two halves of one class
    def mean_of(digit: str, part: slice) -> np.ndarray:
        paths = sorted((tmp_path / "digits" / digit).glob("*.png"))[part]
        return np.mean([np.asarray(Image.open(p), dtype=float) for p in paths], axis=0)

    same = np.abs(mean_of("0", slice(0, 40)) - mean_of("0", slice(40, 80))).mean()
    other = np.abs(mean_of("0", slice(0, 40)) - mean_of("1", slice(0, 40))).mean()
    assert other > 3 * same


# --- make demo: two runs on the same split, compared from what they logged -----------------------------------------

ROOT = Path(__file__).parents[1]


def demo_recipe() -> str:
    """The commands of the Makefile's ``demo`` target, continuation lines joined."""
    lines = (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(" ".join(line.split()))
    return "\n".join(recipe)


def test_make_demo_trains_from_scratch_and_a_pretrained_probe_then_compares() -> None:
    recipe = demo_recipe()
    steps = recipe.splitlines()
    assert steps[0].endswith("-m lit_transfer.demo $(DEMO_DATA)")
    assert "fit --config configs/quickstart.yaml" in steps[1]
    assert '"$$($(BIN)/python -m lit_transfer.demo lite0-weights)"' in steps[2]
    assert (
        "fit --config configs/demo_lite0_probe.yaml" in steps[2] and '--model.init_args.weights "$$weights"' in steps[2]
    )
    assert steps[3].endswith("-m lit_transfer.demo compare runs/quickstart runs/demo_lite0_probe")
    # the two configs split the same folder the same way, so the compared test images are the same
    quick, probe = (yaml.safe_load((ROOT / "configs" / name).read_text()) for name in QUICK_AND_PROBE)
    for key in ("root", "val_fraction", "test_fraction"):
        assert quick["data"]["init_args"][key] == probe["data"]["init_args"][key]
    assert "seed_everything" not in quick and "seed_everything" not in probe
    assert quick["test_after_fit"] is probe["test_after_fit"] is True
    # the probe: frozen Lite0, positional map of a weights file given on the command line, features cached
    model = probe["model"]["init_args"]
    assert model["backbone"] == "timm/tf_efficientnet_lite0" and model["weights_map"] == "positional"
    assert model["weights"] is None and model["freeze"] == "backbone" and probe["cache_features"]["enabled"] is True
    assert probe["data"]["init_args"]["augmentation"] == "none"  # augmented images would not be cached
    assert Path(lite0_weights()).is_file()  # the file the demo extra installs
    assert "lit_transfer.demo lite0-weights" in (ROOT / "configs" / "demo_lite0_probe.yaml").read_text()


QUICK_AND_PROBE = ("quickstart.yaml", "demo_lite0_probe.yaml")


def test_no_config_names_a_machine_path() -> None:
    for config in (ROOT / "configs").glob("*.yaml"):
        text = config.read_text()
        assert "/home/" not in text and "/work/" not in text and "site-packages" not in text, config.name
        weights = (yaml.safe_load(text).get("model") or {}).get("init_args", {}).get("weights")
        assert not (isinstance(weights, str) and Path(weights).is_absolute()), config.name


def fake_run(folder: Path, test_acc: float | None, test_paths: list[str], backbone: str = "smallcnn") -> Path:
    """A run folder as a fit leaves it: TensorBoard scalars, split_manifest.csv and config.yaml."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    writer = SummaryWriter(str(folder))
    for step, acc in enumerate([0.5, 0.8, 0.7]):
        writer.add_scalar("val_acc", acc, step)
    if test_acc is not None:
        writer.add_scalar("test_acc", test_acc, 3)
    writer.close()
    rows = ["path,class,split", "0/a.png,0,train", *(f"{p},{p[0]},test" for p in test_paths)]
    (folder / "split_manifest.csv").write_text("\n".join(rows) + "\n")
    spec = {"model": {"init_args": {"backbone": backbone, "weights": None, "freeze": None}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_demo_compare_prints_the_logged_test_accuracies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "a" / "version_0", 0.25, ["0/b.png", "1/c.png"])
    fake_run(tmp_path / "a" / "version_10", 0.975, ["0/b.png", "1/c.png"])  # the newest: 10 > 9 > 2
    fake_run(tmp_path / "a" / "version_9", 0.5, ["0/b.png", "1/c.png"])
    fake_run(tmp_path / "b" / "version_0", 0.5, ["1/c.png", "0/b.png"], backbone="timm/tf_efficientnet_lite0")
    demo_main(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "version_0")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "test accuracy on the same 2 test images:"
    assert out[1] == "  test_acc 0.975  best val_acc 0.800  a/version_10: smallcnn, trained from scratch"
    assert out[2].startswith("  test_acc 0.500  best val_acc 0.800  b/version_0: timm/tf_efficientnet_lite0")
    assert read_result(tmp_path / "a").folder.name == "version_10"


def test_demo_compare_refuses_runs_it_cannot_compare(tmp_path: Path) -> None:
    fake_run(tmp_path / "a" / "version_0", 0.9, ["0/b.png", "1/c.png"])
    fake_run(tmp_path / "other_split" / "version_0", 0.9, ["0/b.png", "1/d.png"])
    fake_run(tmp_path / "untested" / "version_0", None, ["0/b.png", "1/c.png"])
    with pytest.raises(ValueError, match="tested on different images"):
        compare([tmp_path / "a", tmp_path / "other_split"])
    with pytest.raises(ValueError, match="logged no test_acc: fit it with --test_after_fit true"):
        compare([tmp_path / "a", tmp_path / "untested"])
    with pytest.raises(SystemExit, match=r"lit_transfer\.demo compare: .*neither a run folder"):
        demo_main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")])


def test_lfw_demo_data_is_two_classes_of_real_faces_and_non_faces(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    from PIL import Image

    from lit_transfer.demo import build_lfw

    assert build_lfw(tmp_path / "lfw", size=32) == 200
    faces, others = sorted((tmp_path / "lfw/face").iterdir()), sorted((tmp_path / "lfw/nonface").iterdir())
    assert len(faces) == len(others) == 100
    assert Image.open(faces[0]).size == (32, 32)
