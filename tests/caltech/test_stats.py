"""The data card: counts, modes, sizes, EXIF, unreadable files, duplicates and exact mean/std against the truth."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_transfer.commands import run
from lit_transfer.commands.datacard import build_datacard
from lit_transfer.data.base import ImageFilesDataset
from lit_transfer.data.caltech101 import Caltech101DataModule
from lit_transfer.data.images import load_rgb
from lit_transfer.data.splits import SPLITS
from lit_transfer.data.stats import ChannelStats, compute_channel_stats
from lit_transfer.data.transforms import eval_transform

SIZE = 32
MODES = ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "RGB", "L"]
CLASS_SIZES = {"alpha": 10, "beta": 8, "gamma": 6}


def _save(path: Path, mode: str, size: tuple[int, int], rng: np.random.Generator, **kwargs: Any) -> None:
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    elif mode == "P":
        image = rgb.quantize(16)
    else:
        image = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def make_card_tree(root: Path) -> dict[str, dict[str, Any]]:
    """Write the tree; return relative path → truth (class, mode, upright size, duplicate group, readable)."""
    rng = np.random.default_rng(4)
    truth: dict[str, dict[str, Any]] = {}
    for c, (name, n) in enumerate(CLASS_SIZES.items()):
        for i in range(n):
            mode = MODES[i % len(MODES)]
            rel = f"{name}/img_{i:02d}.{'png' if mode in ('RGBA', 'P', 'I;16') else 'jpg'}"
            size = (20 + 3 * i + c, 16 + 2 * i)
            _save(root / rel, mode, size, rng)
            truth[rel] = {"class": name, "mode": mode, "size": size, "group": rel, "readable": True}
    # stored 44x20 with EXIF orientation 6 (rotate 90°): shown upright as 20x44
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(root / "alpha/rotated.jpg", "RGB", (44, 20), rng, exif=exif)
    truth["alpha/rotated.jpg"] = {"class": "alpha", "mode": "RGB", "size": (20, 44), "group": "r", "readable": True}
    (root / "beta/broken.jpg").write_bytes(b"this is not a JPEG")
    truth["beta/broken.jpg"] = {"class": "beta", "mode": None, "size": None, "group": "b", "readable": False}
    (root / "gamma/notes.txt").write_text("not an image, never a sample")
    # byte-identical copies: four of one alpha image (some land in different splits), one across classes
    for k in range(3):
        shutil.copyfile(root / "alpha/img_00.jpg", root / f"alpha/copy_{k}.jpg")
        truth[f"alpha/copy_{k}.jpg"] = {**truth["alpha/img_00.jpg"]}
    shutil.copyfile(root / "alpha/img_01.jpg", root / "beta/from_alpha.jpg")
    truth["beta/from_alpha.jpg"] = {**truth["alpha/img_01.jpg"], "class": "beta"}
    return truth


@pytest.fixture(scope="module")
def card_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Caltech101DataModule, dict, list]:
    root = tmp_path_factory.mktemp("card") / "101_ObjectCategories"
    truth = make_card_tree(root)
    dm = Caltech101DataModule(root=str(root.parent), image_size=SIZE, num_workers=0)
    card, rows = build_datacard(dm)
    return root, truth, dm, card, rows


def test_counts_per_class_and_split(card_setup: tuple) -> None:
    _, truth, dm, card, _ = card_setup
    assert card["class_names"] == ["alpha", "beta", "gamma"] and card["images"] == len(truth)
    assert {s.path for s in dm.samples} == set(truth)  # the unreadable file is still a sample: the card reports it
    for split in SPLITS:
        expected = Counter(dm.class_names[s.label] for s in dm.samples if s.split == split)
        got = card["splits"][split]["class_counts"]
        assert got == {name: expected.get(name, 0) for name in dm.class_names}
        present = [v for v in got.values() if v]
        assert card["splits"][split]["imbalance_ratio"] == pytest.approx(max(present) / min(present), abs=1e-4)
        assert card["splits"][split]["images"] == sum(got.values())
    totals = Counter(t["class"] for t in truth.values())
    assert {n: sum(card["splits"][s]["class_counts"][n] for s in SPLITS) for n in totals} == totals


def test_modes_sizes_exif_and_unreadable(card_setup: tuple) -> None:
    _, truth, dm, card, _ = card_setup
    modes: Counter[str] = Counter()
    for split in SPLITS:
        modes.update(card["splits"][split]["modes"])
    assert modes == Counter(t["mode"] for t in truth.values() if t["readable"])
    assert {"L", "RGB", "RGBA", "P", "CMYK", "I;16"} <= set(modes)
    split_of = {s.path: s.split for s in dm.samples}
    for split in SPLITS:
        sizes = [t["size"] for p, t in truth.items() if t["readable"] and split_of[p] == split]
        got = card["splits"][split]
        for key, values in (("width", [w for w, _ in sizes]), ("height", [h for _, h in sizes])):
            assert (got[key]["min"], got[key]["median"], got[key]["max"]) == (
                min(values),
                float(np.median(values)),
                max(values),
            )
            assert sum(got[key]["histogram"]["counts"]) == len(values)
        assert got["aspect_ratio"]["min"] == pytest.approx(min(w / h for w, h in sizes))
    rotated = [(split, r) for split in SPLITS for r in card["splits"][split]["exif_rotated"]]
    assert rotated == [(split_of["alpha/rotated.jpg"], {"path": "alpha/rotated.jpg", "orientation": 6})]
    unreadable = [(split, u) for split in SPLITS for u in card["splits"][split]["unreadable"]]
    assert [(split, u["path"]) for split, u in unreadable] == [(split_of["beta/broken.jpg"], "beta/broken.jpg")]
    assert "not a readable image" in unreadable[0][1]["error"]


def test_duplicates_and_leaks_match_the_truth(card_setup: tuple) -> None:
    _, truth, dm, card, _ = card_setup
    split_of = {s.path: s.split for s in dm.samples}
    groups: dict[str, set[str]] = {}
    for path, t in truth.items():
        groups.setdefault(t["group"], set()).add(path)
    expected = {frozenset(g) for g in groups.values() if len(g) > 1}
    got = {frozenset(f["path"] for f in g["files"]): g for g in card["duplicates"]["groups"]}
    assert set(got) == expected
    for files, group in got.items():
        assert group["across_splits"] == (len({split_of[p] for p in files}) > 1)
        assert group["label_conflict"] == (len({truth[p]["class"] for p in files}) > 1)
    assert card["duplicates"]["across_splits"] >= 1  # the fixture is built so that a leak exists
    assert card["duplicates"]["label_conflicts"] == 1


def test_channel_stats_are_exact_over_eval_transformed_train_pixels(card_setup: tuple) -> None:
    root, truth, dm, card, _ = card_setup
    train = [s.path for s in dm.samples if s.split == "train" and truth[s.path]["readable"]]
    transform = eval_transform(SIZE)
    pixels = np.stack([transform(load_rgb(root / p)).numpy() for p in train]).astype(np.float64) / 255
    stats = card["channel_stats"]
    assert stats["pixels_per_channel"] == len(train) * SIZE * SIZE
    assert stats["mean"] == pytest.approx(pixels.mean(axis=(0, 2, 3)).tolist(), rel=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(axis=(0, 2, 3)).tolist(), rel=1e-12)
    per_image_std = pixels.std(axis=(2, 3)).mean(axis=0)  # seed 001's shortcut, not the same number
    assert not np.allclose(per_image_std, stats["std"], rtol=1e-6)
    # the public function gives the same numbers from a dataset, skipping what cannot be decoded
    all_train = [s for s in dm.samples if s.split == "train"]
    dataset = ImageFilesDataset(root, [s.path for s in all_train], [s.label for s in all_train], transform)
    mean, std = compute_channel_stats(dataset)
    assert mean == pytest.approx(stats["mean"], rel=1e-12) and std == pytest.approx(stats["std"], rel=1e-12)


def test_channel_stats_accumulator_on_float_images() -> None:
    images = [torch.rand(3, 5, 7, dtype=torch.float64) for _ in range(4)]
    stats = ChannelStats()
    for image in images:
        stats.update(image)
    mean, std = stats.result()
    stacked = torch.stack(images)
    assert mean == pytest.approx(stacked.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert std == pytest.approx(stacked.std(dim=(0, 2, 3), correction=0).tolist(), rel=1e-9)
    with pytest.raises(ValueError, match="no pixels"):
        ChannelStats().result()


def test_main_writes_json_plots_and_tensorboard(card_setup: tuple, tmp_path: Path, capsys: Any) -> None:
    root, _, _, card, _ = card_setup
    out = tmp_path / "card"
    args = ["--data", "lit_transfer.data.caltech101.Caltech101DataModule", "--data.init_args.root", str(root)]
    run(
        "stats",
        [*args, "--out", str(out), "--data.init_args.image_size", str(SIZE), "--data.init_args.num_workers", "0"],
    )
    written = json.loads((out / "datacard.json").read_text())
    assert written["splits"] == json.loads(json.dumps(card["splits"]))
    assert written["channel_stats"]["mean"] == pytest.approx(card["channel_stats"]["mean"], rel=1e-12)
    for name in ("class_counts.png", "sizes.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 50
    events = EventAccumulator(str(out))
    events.Reload()
    assert {"datacard/class_counts", "datacard/sizes"} <= set(events.Tags()["images"])
    assert "datacard/summary/text_summary" in events.Tags()["tensors"]
    assert "datacard/train/width" in events.Tags()["histograms"]
    printed = capsys.readouterr().out
    assert "imbalance" in printed and "leak" in printed and "beta/broken.jpg" in printed


def test_stats_command_in_a_subprocess(card_setup: tuple, tmp_path: Path) -> None:
    root = card_setup[0]
    config = {
        "trainer": {"max_epochs": 3},  # other sections are accepted and never built: no model, no weights
        "model": {"class_path": "lit_transfer.models.TransferClassifier", "init_args": {"weights": "IMAGENET1K_V1"}},
        "data": {
            "class_path": "lit_transfer.data.caltech101.Caltech101DataModule",
            "init_args": {"root": str(root.parent), "image_size": SIZE, "num_workers": 0},
        },
    }
    path = tmp_path / "tiny_card.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "lit_transfer", "stats", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "runs" / "tiny_card" / "datacard" / "datacard.json").read_text())
    assert card["num_classes"] == 3 and card["image_size"] == SIZE


@pytest.mark.parametrize("name", ["caltech101_vgg16_frozen", "caltech101_resnet50_finetune"])
def test_stats_runs_on_the_caltech_configs(card_setup: tuple, tmp_path: Path, name: str) -> None:
    config = Path(__file__).parents[2] / "configs" / f"{name}.yaml"
    root = card_setup[0].parent
    overrides = ["--data.init_args.root", str(root), "--data.init_args.image_size", str(SIZE)]
    run("stats", ["--config", str(config), *overrides, "--data.init_args.num_workers", "0", f"--out={tmp_path}"])
    card = json.loads((tmp_path / "datacard.json").read_text())
    assert card["class_names"] == ["alpha", "beta", "gamma"]
    assert card["data_module"] == "lit_transfer.data.caltech101.Caltech101DataModule"
