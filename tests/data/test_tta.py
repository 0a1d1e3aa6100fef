"""Test-time augmentation (``data.init_args.tta``): the views, their collation, the model's average, the CLI.

Every expectation is computed independently: views with torchvision's own ``Resize``/``CenterCrop``/``FiveCrop``/
``TenCrop`` on the decoded file, predictions by running the model on each view separately and averaging the softmax
probabilities with NumPy, accuracy with scikit-learn.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import tiny_args
from torchvision.transforms import InterpolationMode, v2

from lit_transfer.cli import main
from lit_transfer.core.batches import BadSample, Batch
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.data.collate import collate_skipping_bad
from lit_transfer.data.rotnet import RotNetDataModule
from lit_transfer.data.transforms import eval_transform
from lit_transfer.models import TransferClassifier

CLASSES = ("a", "b", "c")


def noise_tree(root: Path, per_class: int = 10, seed: int = 5) -> Path:
    """Three classes of noise with a bright patch of a random colour at a random place: labels a model gets partly
    right, and views (mirrors, corners) that it sees differently."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i in range(per_class):
            pixels = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            top, left = rng.integers(0, 40 - 12), rng.integers(0, 48 - 12)
            pixels[top : top + 12, left : left + 12, rng.integers(3)] = 255
            path = root / name / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def resized(path: Path, pre: Preprocessing) -> torch.Tensor:
    """The decoded file resized as ``pre`` says (short side, or both sides for ``squash``), by torchvision."""
    image = v2.PILToTensor()(Image.open(path).convert("RGB"))
    size = [pre.resize_size, pre.resize_size] if pre.crop_mode == "squash" else pre.resize_size
    return v2.Resize(size, interpolation=InterpolationMode(pre.interpolation), antialias=True)(image)


def expected_views(path: Path, pre: Preprocessing, tta: str) -> torch.Tensor:
    """The TTA views of one file, made from torchvision's transforms applied on their own."""
    image = resized(path, pre)
    if tta == "five_crop":
        return torch.stack(list(v2.FiveCrop(pre.input_size)(image)))
    if tta == "ten_crop":
        return torch.stack(list(v2.TenCrop(pre.input_size)(image)))
    centre = v2.CenterCrop(pre.input_size)(image)
    return torch.stack([centre, torch.flip(centre, dims=[-1])]) if tta == "flip" else centre


# --- the views ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
@pytest.mark.parametrize("tta", ["none", "flip", "five_crop", "ten_crop"])
def test_views_are_the_flips_and_crops_of_the_resized_image(tmp_path: Path, crop_mode: str, tta: str) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (44, 60, 3), dtype=np.uint8)).save(path)
    pre = Preprocessing.from_dict({"input_size": 32, "resize_size": 40, "crop_mode": crop_mode})
    views = eval_transform(pre, tta)(Image.open(path).convert("RGB"))
    want = expected_views(path, pre, tta)
    assert views.dtype == torch.uint8 and views.shape == want.shape and torch.equal(views, want)
    if tta == "none":
        assert views.shape == (3, 32, 32) and torch.equal(views, eval_transform(pre)(Image.open(path).convert("RGB")))
    else:
        n = {"flip": 2, "five_crop": 5, "ten_crop": 10}[tta]
        assert views.shape == (n, 3, 32, 32)
        assert len({v.numpy().tobytes() for v in views}) == n  # every view differs from the others


def test_collation_stacks_views_and_carries_bad_files() -> None:
    items = [(torch.full((5, 3, 8, 8), i, dtype=torch.uint8), i % 2, i) for i in range(3)]
    bad = BadSample("x.png", "val", "OSError: broken")
    batch = collate_skipping_bad([items[0], bad, items[1], items[2]])
    assert batch.images.shape == (3, 5, 3, 8, 8) and batch.bad == [bad]
    assert [int(batch.images[b, v, 0, 0, 0]) for b in range(3) for v in (0, 4)] == [0, 0, 1, 1, 2, 2]
    assert batch.targets.tolist() == [0, 1, 0] and batch.indices.tolist() == [0, 1, 2]


def test_data_module_views_evaluation_splits_only(image_tree: Path) -> None:
    def data(tta: str) -> ImageFolderDataModule:
        dm = ImageFolderDataModule(root=str(image_tree), image_size=32, num_workers=0, normalize="dataset",
                                   test_fraction=0.25, augmentation="none", tta=tta)  # type: ignore[arg-type]  # fmt: skip
        dm.setup("fit")
        return dm

    plain, ten = data("none"), data("ten_crop")
    assert ten.tta == "ten_crop" and plain.tta == "none"
    assert ten._datasets["train"][0][0].shape == (3, 32, 32)  # training is never TTA'd
    for split in ("val", "test"):
        image, label, index = ten._datasets[split][0]
        assert image.shape == (10, 3, 32, 32) and (label, index) == plain._datasets[split][0][1:]
        assert torch.equal(image[4], plain._datasets[split][0][0])  # the centre crop is the single view
    # the dataset statistics and the reports' images measure the single evaluation view, whatever the TTA
    assert ten.normalization == plain.normalization
    assert torch.equal(ten.image_of("val", 0), plain.image_of("val", 0))  # type: ignore[arg-type]


def test_crops_that_make_no_sense_are_refused(image_tree: Path) -> None:
    def data(tta: str, **pre: object) -> ImageFolderDataModule:
        return ImageFolderDataModule(root=str(image_tree), num_workers=0, tta=tta,  # type: ignore[arg-type]
                                     preprocessing={"input_size": 32, **pre})  # fmt: skip

    with pytest.raises(ValueError, match=r"data\.init_args\.tta=five_crop with preprocessing\.crop_mode=border"):
        data("five_crop", crop_mode="border")
    with pytest.raises(ValueError, match=r"data\.init_args\.tta=ten_crop: the evaluation resize \(29 px"):
        data("ten_crop", crop_pct=1.1)
    with pytest.raises(ValueError, match=r"data\.init_args\.tta='mirror': use one of"):
        data("mirror")
    assert data("flip", crop_mode="border").tta == "flip"  # the mirror of a letterboxed image is fine
    assert data("five_crop", crop_mode="squash").tta == "five_crop"


def test_rotnet_refuses_tta(tree_factory: Callable[..., Path]) -> None:
    root = tree_factory("photos", per_class=2)
    for tta in ("flip", "five_crop", "ten_crop"):
        with pytest.raises(ValueError, match=r"data\.init_args\.tta=.*a rotation by -k"):
            RotNetDataModule(root=str(root), image_size=32, num_workers=0, tta=tta)
    assert RotNetDataModule(root=str(root), image_size=32, num_workers=0).tta == "none"


def test_rotnet_with_flip_fails_before_anything_runs(
    tree_factory: Callable[..., Path], in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree_factory("photos", per_class=2)
    args = ["fit", "--data", "lit_transfer.data.rotnet.RotNetDataModule", "--data.root", str(root),
            "--data.image_size", "32", "--data.num_workers", "0", "--data.init_args.tta", "flip",
            "--model", "lit_transfer.models.rotnet.RotNetClassifier", "--model.backbone", "smallcnn",
            "--trainer.accelerator", "cpu", "--experiment", "rot"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert "data.init_args.tta=flip" in capsys.readouterr().err
    assert not (in_tmp / "runs").exists()


# --- the model's average --------------------------------------------------------------------------------------------


def test_model_returns_the_log_of_the_mean_softmax_over_views() -> None:
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn").eval()
    x = torch.randint(0, 256, (4, 5, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        out = model.logits(Batch(x, y, torch.arange(4), []))
        per_view = np.stack([model(x[:, v]).softmax(dim=1).double().numpy() for v in range(5)])
        single = model.logits(Batch(x[:, 2], y, torch.arange(4), []))
        assert torch.equal(single, model(x[:, 2]))  # a plain batch is unchanged
    mean = per_view.mean(axis=0)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out.double().numpy(), np.log(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.softmax(dim=1).double().numpy(), mean, rtol=1e-5, atol=1e-6)
    nll = -np.log(mean[np.arange(4), y.numpy()]).mean()
    assert float(F.cross_entropy(out, y)) == pytest.approx(nll, rel=1e-5)
    assert not np.allclose(mean, per_view[0])  # the views really disagree, so the average matters


# --- through the CLI ------------------------------------------------------------------------------------------------


def cli_args(root: Path, runs: Path, *extra: str) -> list[str]:
    return [*tiny_args(root, *extra), "--data.test_fraction", "0.4", "--runs_dir", str(runs)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """smallcnn fitted for an epoch on the noise tree, validated with five crops: (data root, runs, checkpoint)."""
    base = tmp_path_factory.mktemp("tta_run")
    root, runs = noise_tree(base / "data"), base / "runs"
    main(["fit", *cli_args(root, runs), "--data.init_args.tta", "five_crop"])
    return root, runs, runs / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


def independent_probs(ckpt: Path, paths: list[Path], tta: str) -> tuple[np.ndarray, list[str]]:
    """Each file's softmax probabilities averaged over its views, one forward per view, and the class names."""
    checkpoint = torch.load(ckpt, weights_only=True)
    pre = Preprocessing.from_dict(checkpoint["lit_transfer"]["preprocessing"])
    model = TransferClassifier.load_from_checkpoint(ckpt).eval()
    views = [expected_views(p, pre, tta) for p in paths]
    if tta == "none":
        views = [v.unsqueeze(0) for v in views]
    with torch.no_grad():
        probs = [
            model(torch.stack([v[i] for v in views])).softmax(dim=1).double().numpy() for i in range(len(views[0]))
        ]
    return np.mean(probs, axis=0), list(model.class_names)


def logged(folder: Path) -> dict[str, float]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def manifest(run: Path, split: str) -> list[dict[str, str]]:
    with open(run / "split_manifest.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_fit_validates_on_the_views_and_reports_one_view_per_mistake(trained: tuple[Path, Path, Path]) -> None:
    root, _, ckpt = trained
    run = ckpt.parent.parent
    rows = manifest(run, "val")
    probs, names = independent_probs(ckpt, [root / r["path"] for r in rows], "five_crop")
    labels = np.array([names.index(r["class"]) for r in rows])
    metrics = logged(run)  # one epoch: last.ckpt holds the weights that were validated
    assert metrics["val_acc"] == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)), abs=1e-6)
    assert metrics["val_loss"] == pytest.approx(-np.log(probs[np.arange(len(rows)), labels]).mean(), rel=1e-5)
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    (grid,) = events.Images("reports/top_mistakes")  # the mistakes drawn from the centre crops
    assert grid.width > 0 and probs.argmax(axis=1).tolist() != labels.tolist()


@pytest.mark.parametrize("tta", ["flip", "none"])
def test_test_logs_the_accuracy_and_loss_of_the_averaged_predictions(
    trained: tuple[Path, Path, Path], tta: str
) -> None:
    root, runs, ckpt = trained
    run = ckpt.parent.parent
    before = set(run.glob("test_*"))
    main(["test", *cli_args(root, runs, "--ckpt_path", str(ckpt)), "--data.init_args.tta", tta])
    (folder,) = set(run.glob("test_*")) - before
    rows = manifest(run, "test")
    probs, names = independent_probs(ckpt, [root / r["path"] for r in rows], tta)
    labels = np.array([names.index(r["class"]) for r in rows])
    metrics = logged(folder)
    assert metrics["test_acc"] == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)), abs=1e-6)
    nll = -np.log(probs[np.arange(len(rows)), labels]).mean()
    assert metrics["test_loss"] == pytest.approx(nll, rel=1e-5)
    if tta == "flip":  # the mirrored views change the prediction: a single view would log another loss
        single, _ = independent_probs(ckpt, [root / r["path"] for r in rows], "none")
        assert abs(-np.log(single[np.arange(len(rows)), labels]).mean() - nll) > 1e-4


def test_predict_with_ten_crop_writes_the_averaged_probabilities(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, runs, ckpt = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted(root.glob("*/img_00[0-2].png"))
    for i, source in enumerate(sources):
        (photos / f"p{i}.png").write_bytes(source.read_bytes())
    main(["predict", *cli_args(root, runs, "--ckpt_path", str(ckpt)), "--data.predict_dir", str(photos),
          "--data.init_args.tta", "ten_crop"])  # fmt: skip
    (csv_path,) = ckpt.parent.parent.glob("predict_*/predictions.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    probs, names = independent_probs(ckpt, [photos / Path(r["path"]).name for r in rows], "ten_crop")
    assert len(rows) == len(sources)
    for row, want in zip(rows, probs, strict=True):
        got = np.zeros(len(names))
        for k in range(1, len(names) + 1):
            got[names.index(row[f"top{k}"])] = float(row[f"top{k}_prob"])
        assert got.sum() == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(got, want, atol=5e-6)  # the CSV has 6 decimals
        assert row["prediction"] == names[int(want.argmax())]


def test_feature_cache_serves_training_and_leaves_tta_views_to_the_images(
    tree_factory: Callable[..., Path], tmp_path: Path
) -> None:
    root = tree_factory("data", per_class=6)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="val split: loading images, not cached features: data.init_args.tta"):
        main(["fit", *tiny_args(root), "--data.augmentation", "none", "--model.freeze", "backbone",
              "--data.init_args.tta", "flip", "--cache_features.enabled", "true", "--cache_features.dir", str(cache),
              "--runs_dir", str(tmp_path / "runs")])  # fmt: skip
    assert sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()) == ["train"]
    assert "val_acc" in logged(tmp_path / "runs" / "tiny" / "version_0")
