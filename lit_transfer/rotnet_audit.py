"""``python -m lit_transfer audit-rotnet``: does a RotNet pipeline leak the angle? Train on pure noise and see.

Noise has no orientation, so a network trained to predict its rotation must stay at chance (1/num_rotations, and
0.5 for telling odd from even classes) unless the rotation itself leaves traces: black corners, interpolation blur,
the orientation of a resampling grid. The audit generates Gaussian noise images and puts them through the configured
pipeline (same options, with the images' folder as ``root``, ``weights: null``, nothing frozen, an 80/20 split):

1. a model-free test compares the power spectra of each image's even-class and odd-class views, in standard
   deviations of a sign-flip permutation null (:func:`spectral_sigma`); a leak above ``SPECTRAL_LIMIT``;
2. the data module, model and trainer train briefly, and validation accuracy and parity accuracy are reported per
   epoch against chance; a leak above chance + ``max(0.05, 4 standard errors)``.

It exits with status 1 on a leak, 0 otherwise.

    python -m lit_transfer audit-rotnet --config configs/rotnet_pretrain.yaml --audit.small true
    python -m lit_transfer audit-rotnet --config configs/rotnet_pretrain.yaml --data.init_args.geometry naive

``--audit.small true`` audits at 32 px with the small CNN and Adam 1e-3 (a minute or two on two CPU cores); without
it the configured model and image size are used (a GPU job for ResNet50 at 224 px). ``--audit.images`` (2000),
``--audit.epochs`` (4) and ``--audit.seed`` (0, the noise) set the rest.
"""

from __future__ import annotations

import importlib
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image

from lit_transfer.cli import LitTransferCLI
from lit_transfer.core.errors import ConfigError
from lit_transfer.data.rotnet import RotNetDataModule

SMALL_OVERRIDES: tuple[str, ...] = (
    "--data.init_args.image_size", "32",
    "--data.init_args.batch_size", "32",
    "--data.init_args.num_workers", "0",
    "--model.init_args.backbone", "smallcnn",
    "--optimizer", "torch.optim.Adam",  # the configured optimizer may suit only its own (BatchNorm) network
    "--optimizer.lr", "0.001",
)  # fmt: skip


SPECTRAL_LIMIT = 6.0  # standard errors

AUDIT_HELP = (
    "Does a RotNet pipeline leak the angle? Trains the configured pipeline (a fit config: same options, weights "
    "null, nothing frozen, an 80/20 split) on Gaussian noise, which has no orientation, and reports validation and "
    "parity accuracy against chance, and a model-free test of the power spectra. Exit status 1 on a leak. "
    "Example: python -m lit_transfer audit-rotnet --config configs/rotnet_pretrain.yaml --audit.small true"
)


@dataclass
class AuditOptions:
    """What ``--audit.*`` sets: how many noise images, how long to train, and the random seed of the noise.

    Args:
        images: noise images to generate (at least 20; 80% train, 20% validation).
        epochs: epochs to train on them (at least 1).
        small: audit at 32 px with the small CNN and Adam 1e-3 (minutes on a CPU) instead of the configured model and
            image size.
        seed: random seed of the noise.
    """

    images: int = 2000
    epochs: int = 4
    small: bool = False
    seed: int = 0


@dataclass
class AuditResult:
    """Per-epoch validation accuracy and parity accuracy, the chance levels and the verdict."""

    num_rotations: int
    views: int
    accuracy: list[float] = field(default_factory=list)
    parity: list[float] = field(default_factory=list)
    spectral_sigma: float = 0.0

    @property
    def chance(self) -> float:
        """Accuracy of guessing."""
        return 1 / self.num_rotations

    def tolerance(self, p: float) -> float:
        """How far above chance ``p`` a score may be before it counts as a leak: 4 standard errors, at least 0.05."""
        return max(0.05, 4 * math.sqrt(p * (1 - p) / max(1, self.views)))

    @property
    def leak(self) -> bool:
        """Whether any epoch's accuracy or parity accuracy is above chance by more than the tolerance."""
        acc_limit = self.chance + self.tolerance(self.chance)
        parity_limit = 0.5 + self.tolerance(0.5)
        trained_leak = max(self.accuracy, default=0) > acc_limit or max(self.parity, default=0) > parity_limit
        return trained_leak or self.spectral_sigma > SPECTRAL_LIMIT

    def report(self) -> str:
        """The per-epoch table and the verdict."""
        lines = ["epoch  val_acc  parity_acc"]
        scores = zip(self.accuracy, self.parity, strict=True)
        lines += [f"{epoch:>5}  {acc:7.3f}  {parity:10.3f}" for epoch, (acc, parity) in enumerate(scores, start=1)]
        acc_limit = self.chance + self.tolerance(self.chance)
        parity_limit = 0.5 + self.tolerance(0.5)
        lines.append(
            f"chance: accuracy {self.chance:.3f} (leak above {acc_limit:.3f}), parity 0.500 (leak above "
            f"{parity_limit:.3f}); {self.views} validation views"
        )
        lines.append(
            f"power spectra of odd and even classes: {self.spectral_sigma:+.1f} standard errors apart "
            f"(leak above {SPECTRAL_LIMIT:g})"
        )
        best_acc, best_parity = max(self.accuracy, default=0), max(self.parity, default=0)
        verdict = "LEAK: the network reads the rotation from artifacts" if self.leak else "no leak found"
        lines.append(f"{verdict} (best accuracy {best_acc:.3f}, best parity accuracy {best_parity:.3f})")
        return "\n".join(lines)


def spectral_difference(views: torch.Tensor) -> torch.Tensor:
    """The mean power spectrum of one image's even-class views minus that of its odd-class views.

    Args:
        views: ``(num_rotations, C, H, W)`` views of one image, class ``k`` at index ``k``.

    Returns:
        The difference at each of the distinct non-zero frequencies of a real image (``about H * W / 2``).
    """
    x = views.float()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(x).abs().pow(2).mean(dim=1)  # (R, H, W // 2 + 1), channels averaged
    diff = power[0::2].mean(dim=0) - power[1::2].mean(dim=0)
    height, width = x.shape[-2], x.shape[-1]
    keep = torch.ones(height, width // 2 + 1, dtype=torch.bool)
    keep[0, 0] = False  # the mean, removed
    for column in {0, width // 2} if width % 2 == 0 else {0}:
        keep[height // 2 + 1 :, column] = False  # conjugates of the rows above
    return diff[keep]


def spectral_sigma(diff: torch.Tensor, permutations: int = 1000, seed: int = 0) -> float:
    """How far the even and odd classes' spectra are apart, in standard deviations of a sign-flip permutation null.

    The statistic is the mean over frequencies of ``n * mean(d)^2 / mean(d^2)``. Without a leak an image's even and
    odd views are exchangeable, so flipping the sign of its difference changes nothing in distribution: the
    statistic under random flips is its exact null distribution, correlated frequencies and heavy tails included.
    """
    n = diff.shape[0]
    scaled = diff / diff.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)
    observed = float((scaled.mean(dim=0).pow(2) * n).mean())
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (permutations, n), generator=generator).float() * 2 - 1
    null = ((signs @ scaled) / n).pow(2).mul(n).mean(dim=1)
    return (observed - float(null.mean())) / max(float(null.std()), 1e-12)


def spectral_test(data: RotNetDataModule, max_images: int = 1000) -> float:
    """:func:`spectral_sigma` of the even and odd views of up to ``max_images`` images of every split.

    A model-free second-order test: a network can exploit any difference in power spectra between classes (the
    orientation of a resampling grid, the reflection at a source's edge, interpolation blur), and comparing each
    image's rotations with each other finds one with far fewer images than training needs.
    """
    paths = [sample.path for sample in data.samples][:max_images]
    dataset = data.make_dataset(data.data_root, paths, [0] * len(paths), "val")
    diffs = []
    for i in range(len(paths)):
        items = [dataset[i * data.num_rotations + k] for k in range(data.num_rotations)]
        if all(isinstance(item, tuple) for item in items):
            diffs.append(spectral_difference(torch.stack([item[0] for item in items])))
    return spectral_sigma(torch.stack(diffs))


class ValidationRecorder(Callback):
    """Records validation accuracy and parity accuracy of every epoch, whatever the model logs."""

    def __init__(self) -> None:
        self.correct = self.same_parity = self.total = 0
        self.accuracy: list[float] = []
        self.parity: list[float] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting."""
        self.correct = self.same_parity = self.total = 0

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        """Count correct classes and correct parities of one batch."""
        if trainer.sanity_checking or len(batch[1]) == 0:
            return
        predicted = pl_module(batch[0]).argmax(dim=1)
        target = batch[1]
        self.correct += int((predicted == target).sum())
        self.same_parity += int((predicted % 2 == target % 2).sum())
        self.total += len(target)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch's scores."""
        if not trainer.sanity_checking and self.total:
            self.accuracy.append(self.correct / self.total)
            self.parity.append(self.same_parity / self.total)


class AuditCLI(LitTransferCLI):
    """The fit-style CLI with the ``--audit.*`` options, refusing a data module that is not a RotNetDataModule.

    ``--audit.small true`` applies :data:`SMALL_OVERRIDES` after the config files (so the command line still wins);
    ``--audit.epochs`` sets ``trainer.max_epochs``.
    """

    options: AuditOptions

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The fit options, and the audit's own under ``audit``."""
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(AuditOptions, "audit", help="The audit's own options.")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; with ``--audit.small true`` again, the small settings after the config files."""
        super().parse_arguments(parser, args)
        self.options = AuditOptions(**vars(self.config["audit"]))
        if self.options.images < 20 or self.options.epochs < 1:
            raise ConfigError(
                f"--audit.images={self.options.images} and --audit.epochs={self.options.epochs}: use >= 20 and >= 1"
            )
        if self.options.small:
            super().parse_arguments(parser, _after_configs(list(args), SMALL_OVERRIDES))
        self.config["trainer.max_epochs"] = self.options.epochs

    def instantiate_classes(self) -> None:
        """Check the data class, then instantiate data, model and trainer."""
        class_path = str(self.config.get("data", {}).get("class_path", ""))
        module, _, name = class_path.rpartition(".")
        data_class = getattr(importlib.import_module(module), name, None) if module else None
        if not (isinstance(data_class, type) and issubclass(data_class, RotNetDataModule)):
            raise ConfigError(f"audit-rotnet audits a RotNetDataModule pipeline; the config's data is {class_path!r}")
        super().instantiate_classes()


def write_noise_images(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """``count`` PNGs of Gaussian RGB noise (mean 128, sd 48), 1–1.5 times ``side`` and of varied aspect ratios.

    Gaussian noise is the fair null: an exact rotation maps it to noise of the same distribution, so any class a
    network can tell apart comes from the pipeline. The sizes make every image go through the square crop and an
    antialiased downscale, as photos do.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        short = int(side * rng.uniform(1.0, 1.5))
        long = int(short * rng.uniform(1.0, 1.33))
        height, width = (short, long) if i % 2 else (long, short)
        pixels = np.clip(rng.normal(128, 48, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"noise_{i:05d}.png")


def _after_configs(args: list[str], extra: Sequence[str]) -> list[str]:
    """``args`` with ``extra`` inserted after the last config file, so configs lose to them and flags win."""
    end = 0
    for i, arg in enumerate(args):
        if arg == "--config":
            end = i + 2
        elif arg.startswith("--config="):
            end = i + 1
    return [*args[:end], *extra, *args[end:]]


def run_audit(argv: Sequence[str]) -> AuditResult:
    """Generate noise, train the configured pipeline on it and return the per-epoch scores."""
    with tempfile.TemporaryDirectory(prefix="rotnet_audit_") as tmp:
        noise = Path(tmp) / "noise"
        forced = [
            "--data.init_args.root", str(noise),
            "--data.init_args.predict_dir", "null",
            "--data.init_args.val_fraction", "0.2",
            "--data.init_args.test_fraction", "0.0",
            "--model.init_args.weights", "null",
            "--model.init_args.freeze", "none",
            "--model.init_args.unfreeze_at_epoch", "null",
            "--model.init_args.unfreeze_milestones", "null",
            "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", tmp,
            "--checkpoint.dirpath", str(Path(tmp) / "checkpoints"),
        ]  # fmt: skip
        noise.mkdir()
        cli = AuditCLI(
            args=[*argv, *forced],
            run=False,
            save_config_callback=None,
            parser_kwargs={"prog": "lit_transfer audit-rotnet", "description": AUDIT_HELP},
        )
        options = cli.options
        data = cli.datamodule
        if not isinstance(data, RotNetDataModule):  # AuditCLI checked the class; this narrows the type
            raise ConfigError(f"audit-rotnet needs a RotNetDataModule, not {type(data).__name__}")
        write_noise_images(noise, options.images, data.source_size, options.seed)
        data.setup("fit")
        spectral = spectral_test(data)
        recorder = ValidationRecorder()
        cli.trainer.callbacks.append(recorder)  # type: ignore[attr-defined]  # Lightning sets it, undeclared
        print(
            f"audit-rotnet: {data.num_rotations} rotations ({data.angle_mode}), {data.geometry} geometry, "
            f"{options.images} noise images, {data.image_size} px views from {data.source_size} px sources, "
            f"{cli.model.hparams.backbone}, {options.epochs} epochs",
            flush=True,
        )
        cli.trainer.fit(cli.model, datamodule=data)
        views = len(data._datasets["val"])
    return AuditResult(data.num_rotations, views, recorder.accuracy, recorder.parity, spectral)


def main(argv: Sequence[str]) -> None:
    """Run the audit, print the report, exit 1 on a leak."""
    result = run_audit(argv)
    print(result.report(), flush=True)
    if result.leak:
        sys.exit(1)
