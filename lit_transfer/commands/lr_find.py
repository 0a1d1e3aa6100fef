"""``python -m lit_transfer lr-find --config X.yaml``: a learning-rate range test on the experiment's model and data.

The model, data module and trainer are built by :class:`~lit_transfer.cli.app.LitTransferCLI` from the same
arguments as ``fit`` (so a config error reads the same), with the fit checks run before; Lightning's tuner
(:meth:`lightning.pytorch.tuner.Tuner.lr_find`) then trains ``num_training`` steps on the config's optimizer, its
learning rate raised exponentially from ``min_lr`` to ``max_lr`` (Lightning sets it on every parameter group of that
optimizer), and restores the initial weights. The suggested learning rate is printed; the loss-vs-lr plot goes to
``runs/<experiment>/lr_find.png`` (a new name when that file exists) and to TensorBoard beside it
(``runs/<experiment>/lr_find/``: the figure and the curve as scalars).

Nothing of the experiment's runs changes: there is no logger (no ``version_N`` folder), no config is saved, and
Lightning's temporary checkpoint lives in a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image, ImageDraw

from lit_transfer.cli.app import LitTransferCLI
from lit_transfer.cli.checkpoints import checkpoint_state, experiment_checkpoint
from lit_transfer.cli.checks import experiment_from_files
from lit_transfer.core.errors import ConfigError
from lit_transfer.core.fonts import font as _font
from lit_transfer.core.launch import launch_rank

PROG = "lit_transfer lr-find"
HELP = (
    "Learning-rate range test (Lightning's tuner) on the model, data and optimizer a fit config builds: prints the "
    "suggested learning rate and writes the loss-vs-lr plot (PNG and TensorBoard) beside the experiment's runs. "
    "Give the fit config and any fit overrides, plus --min_lr, --max_lr, --num_training and --out."
)
OWN_OPTIONS = ("min_lr", "max_lr", "num_training", "out")


@dataclass(frozen=True)
class LRFindResult:
    """What the range test found and wrote."""

    suggestion: float | None
    lrs: list[float]
    losses: list[float]
    png: Path
    events: Path


class LRFindCLI(LitTransferCLI):
    """The fit CLI with the range test's own options at the top level."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The fit options, and ``--min_lr``, ``--max_lr``, ``--num_training``, ``--out``."""
        super().add_arguments_to_parser(parser)
        parser.add_argument("--min_lr", type=float, default=1e-7, help="Learning rate of the first step.")
        parser.add_argument("--max_lr", type=float, default=1.0, help="Learning rate of the last step.")
        parser.add_argument("--num_training", type=int, default=100, help="Training steps (learning rates) tried.")
        parser.add_argument(
            "--out",
            type=str | None,
            default=None,
            help="PNG of the plot; default: <runs_dir>/<experiment>/lr_find.png (a new name if it exists). "
            "TensorBoard events go to the same path without .png.",
        )


def free_path(path: Path) -> Path:
    """``path`` if neither it nor its events folder (``path`` less suffix) exists, else ``stem_1``, ``stem_2``, …."""
    candidate, n = path, 0
    while candidate.exists() or candidate.with_suffix("").exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def _options(cli: LRFindCLI) -> tuple[float, float, int, str | None]:
    config = cli.config
    min_lr, max_lr, steps = float(config["min_lr"]), float(config["max_lr"]), int(config["num_training"])
    if not (min_lr > 0 and max_lr > min_lr and math.isfinite(max_lr)):
        raise ConfigError(f"--min_lr={min_lr} and --max_lr={max_lr}: use 0 < min_lr < max_lr, e.g. 1e-7 and 1")
    if steps < 2:
        raise ConfigError(f"--num_training={steps}: try at least 2 learning rates, e.g. 100")
    return min_lr, max_lr, steps, config.get("out")


def plot_curve(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None) -> Image.Image:
    """Loss against learning rate (log scale), the suggestion as a red point, drawn with Pillow only.

    (Lightning's ``plot`` needs matplotlib, which lit_transfer does not depend on; this draws the same chart.)
    """
    font = _font(12)
    width, height, left, right, top, bottom = 640, 420, 64, 16, 28, 44
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [(math.log10(lr), loss) for lr, loss in zip(lrs, losses, strict=True) if lr > 0 and math.isfinite(loss)]
    draw.text((left, 6), "lr-find: training loss against learning rate", fill="black", font=font)
    if not points:
        draw.text((left, height // 2), "no finite loss", fill="black", font=font)
        return image
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    median = sorted(p[1] for p in points)[len(points) // 2]
    y1 = min(y1, median + 3 * max(abs(median - y0), abs(median), 1e-12))  # a diverging tail would flatten the rest
    points = [(x, min(y, y1)) for x, y in points]
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for decade in range(math.ceil(x0), math.floor(x1) + 1):
        x, _ = xy(decade, y0)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 12, height - bottom + 6), f"1e{decade}", fill="black", font=font)
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        _, y = xy(x0, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 7), f"{value:.3g}", fill="black", font=font)
    draw.text((width // 2 - 60, height - 18), "learning rate (log scale)", fill="black", font=font)
    draw.line([xy(x, y) for x, y in points], fill=(31, 119, 180), width=2)
    if suggestion is not None and suggestion > 0:
        x = math.log10(suggestion)
        nearest = min(points, key=lambda p: abs(p[0] - x))
        cx, cy = xy(nearest[0], nearest[1])
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=(214, 39, 40))
        draw.text((cx + 8, cy - 16), f"suggested {suggestion:.3g}", fill=(214, 39, 40), font=font)
    return image


def write_plot(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, png: Path, events: Path
) -> None:
    """The plot as a PNG and, with the curve as scalars, into TensorBoard events in ``events``."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    png.parent.mkdir(parents=True, exist_ok=True)
    image = plot_curve(lrs, losses, suggestion)
    image.save(png)
    writer = SummaryWriter(log_dir=str(events))
    try:
        for step, (lr, loss) in enumerate(zip(lrs, losses, strict=True)):
            writer.add_scalar("lr_find/lr", float(lr), step)
            writer.add_scalar("lr_find/loss", float(loss), step)
        if suggestion is not None:
            writer.add_scalar("lr_find/suggestion", suggestion, 0)
        writer.add_image("lr_find/plot", np.asarray(image), 0, dataformats="HWC")
    finally:
        writer.close()


def run_lr_find(argv: Sequence[str]) -> LRFindResult:
    """Build the experiment as ``fit`` does, run the range test and write its plot."""
    from lightning.pytorch.tuner import Tuner

    with tempfile.TemporaryDirectory(prefix="lr_find_") as tmp:
        # no run folder; a temporary checkpoint; one process (a fit config's DDP settings would have Lightning's
        # launcher start more processes, each running this command again)
        forced = ["--trainer.logger", "false", "--trainer.default_root_dir", tmp]
        forced += ["--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto"]
        cli = LRFindCLI(
            args=[*argv, *forced],
            run=False,
            save_config_callback=None,
            parser_kwargs={"prog": PROG, "description": HELP},
        )
        min_lr, max_lr, steps, out = _options(cli)
        cli.before_fit()  # the checks fit makes: balancing, checkpoint monitor, the data's folder and splits
        cli.trainer.fit_loop.max_epochs = -1  # num_training steps, however few batches an epoch has
        lr_finder = Tuner(cli.trainer).lr_find(
            cli.model,
            datamodule=cli.datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            early_stop_threshold=None,
            update_attr=False,
        )
        if lr_finder is None:
            raise ConfigError("lr-find does not run with trainer.fast_dev_run; leave it out")
        leftover = list(Path(tmp).glob(".lr_find_*.ckpt"))
        for path in leftover:  # Lightning removes it; a checkpoint plugin that does not is cleaned up here
            path.unlink()
        suggestion = lr_finder.suggestion()
        png = Path(out) if out else free_path(cli._runs() / "lr_find.png")
        if out and png.exists():
            png = free_path(png)
        events = png.with_suffix("")
        lrs = [float(v) for v in lr_finder.results["lr"]]
        losses = [float(v) for v in lr_finder.results["loss"]]
        suggested = None if suggestion is None else float(suggestion)
        write_plot(lrs, losses, suggested, png, events)
    return LRFindResult(suggestion=suggested, lrs=lrs, losses=losses, png=png, events=events)


def main(argv: Sequence[str]) -> None:
    """Run ``lr-find`` with the arguments after its name; print the suggestion and where the plot went."""
    result = run_lr_find(argv)
    if result.suggestion is None:
        print(f"lr-find: no suggestion (too few finite losses in {len(result.losses)} steps)")
    else:
        print(f"lr-find: suggested learning rate {result.suggestion:.3g} (--optimizer.lr {result.suggestion:.3g})")
    print(f"lr-find: wrote {result.png} and TensorBoard events in {result.events}")


# --- ``fit --optimizer.lr auto`` ---------------------------------------------------------------------------------

_LR_FLAGS = ("--optimizer.lr", "--optimizer.init_args.lr")


def _auto_lr_flag(argv: Sequence[str]) -> tuple[list[str], int | None, str]:
    """``argv`` without its ``--optimizer.lr auto``, where that stood and the flag's spelling (``None``: absent)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in _LR_FLAGS and i + 1 < len(args) and args[i + 1] == "auto":
            return [*args[:i], *args[i + 2 :]], i, arg
        flag, _, value = arg.partition("=")
        if flag in _LR_FLAGS and value == "auto":
            return [*args[:i], *args[i + 1 :]], i, flag
    return args, None, ""


def _last_value(argv: Sequence[str], flag: str, files_key: str | None = None) -> str | None:
    """The last value of ``flag`` on the command line, else of the top-level ``files_key`` of its config files."""
    value: str | None = None
    for arg, nxt in zip(argv, [*argv[1:], ""], strict=True):
        if arg == flag:
            value = nxt
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    if value is not None or files_key is None:
        return value
    for name in _config_files(argv):
        content = _yaml_file(name)
        if isinstance(content, dict) and content.get(files_key) is not None:
            value = str(content[files_key])
    return value


def _config_files(argv: Sequence[str]) -> list[str]:
    files = [b for a, b in zip(argv, [*argv[1:], ""], strict=True) if a in ("--config", "-c")]
    return files + [a.partition("=")[2] for a in argv if a.startswith(("--config=", "-c="))]


def _yaml_file(name: str) -> object:
    try:
        return yaml.safe_load(Path(name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return None


def _checkpoint_lr(argv: Sequence[str], ckpt: str) -> float:
    """The learning rate the checkpoint's run used (a resumed run keeps it; its optimizer state holds it anyway)."""
    if ckpt in ("last", "best"):
        experiment = _last_value(argv, "--experiment", "experiment") or experiment_from_files(_config_files(argv))
        runs = Path(_last_value(argv, "--runs_dir", "runs_dir") or "runs") / experiment
        ckpt = str(experiment_checkpoint(runs, ckpt, "fit"))
    state = checkpoint_state(ckpt) or {}
    optimizer = (state.get("hyper_parameters") or {}).get("optimizer") or {}
    lr = (optimizer.get("init_args") or {}).get("lr") if isinstance(optimizer, dict) else None
    if not isinstance(lr, int | float):
        raise ConfigError(
            f"--optimizer.lr auto with --ckpt_path {ckpt}: the checkpoint records no learning rate to resume with; "
            "give the run's --optimizer.lr"
        )
    return float(lr)


def with_auto_lr(argv: Sequence[str]) -> list[str]:
    """``fit``'s arguments with ``--optimizer.lr auto`` replaced by the learning rate the range test suggests.

    The test runs as ``lr-find`` does (its defaults; plot and TensorBoard events beside the experiment's runs). The
    caller puts the result on the command line, so the DDP processes Lightning's launcher starts get the number, not
    ``auto``. A resumed fit (``--ckpt_path``) keeps the checkpoint's learning rate and searches nothing. Under
    torchrun or SLURM every process would search on its own, so ``auto`` is refused there.
    """
    args = list(argv)
    rest, at, flag = _auto_lr_flag(args[1:])
    if not args or args[0] != "fit" or at is None:
        return args
    external = "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
    ckpt = _last_value(rest, "--ckpt_path")
    if external or launch_rank() != 0:
        raise ConfigError(
            "--optimizer.lr auto: under torchrun or SLURM each process would run its own range test; run "
            "python -m lit_transfer lr-find with the same config once and pass its suggestion as --optimizer.lr"
        )
    if ckpt:
        lr = _checkpoint_lr(rest, ckpt)
        print(f"lr-find: resuming with the checkpoint's learning rate {lr:.3g} (--optimizer.lr auto searches no more)")
    else:
        result = run_lr_find(rest)
        if result.suggestion is None:
            raise ConfigError(
                f"--optimizer.lr auto: the range test found no suggestion (too few finite losses in "
                f"{len(result.losses)} steps, plot in {result.png}); give --optimizer.lr"
            )
        lr = result.suggestion
        print(f"lr-find: --optimizer.lr auto is {lr:.3g} (plot: {result.png})")
    return ["fit", *rest[:at], flag, repr(lr), *rest[at:]]
