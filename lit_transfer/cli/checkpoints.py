"""``--ckpt_path`` before anything is built: ``last``/``best``, the class allow-list, finished runs, the run folder."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from lit_transfer.callbacks.checkpoint import newest_valid_checkpoint
from lit_transfer.core.checkpoints import CheckpointLoadError, load_checkpoint
from lit_transfer.core.errors import ConfigError
from lit_transfer.export import MODEL_CLASSES, refuse_unknown_class
from lit_transfer.export.rebuild import checkpoint_backbone_class, refuse_untrusted_backbone

CKPT_PATH_HINT = "--ckpt_path last takes the newest readable checkpoint of this experiment"


def checkpoint_state(ckpt: str) -> dict[str, Any] | None:
    """A local checkpoint's contents, memory-mapped and read once however many startup checks look at it.

    ``None`` for a remote path, a missing file or one that does not load with ``weights_only=True``.
    """
    if "://" in str(ckpt) or not Path(ckpt).is_file():
        return None
    stat = Path(ckpt).stat()
    return _load_state(str(Path(ckpt).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_state(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    # keyed by modification time and size too: a file rewritten since (a resumed run's last.ckpt) is read again
    try:
        state = load_checkpoint(path, mmap=True)
    except CheckpointLoadError:
        return None
    return state if isinstance(state, dict) else None


def experiment_checkpoint(runs: Path, which: str, subcommand: str) -> Path:
    """The file ``--ckpt_path last`` or ``best`` stands for in the experiment folder ``runs``.

    ``last`` is the newest readable checkpoint of the experiment (an epoch end's ``last.ckpt`` or a SIGTERM's
    ``interrupted.ckpt``), ``best`` its newest run's ``best.ckpt``; resolved before anything is built, so the
    checkpoint's hyperparameters apply as for a file.
    """
    if which == "last":
        found = newest_valid_checkpoint(sorted(runs.glob("version_*/checkpoints")))
        if found is None:
            raise ConfigError(
                f"--ckpt_path last: no readable checkpoint in {runs}/version_*/checkpoints/; run without "
                "--ckpt_path to start training, or give a checkpoint file"
            )
        rank_zero_info(f"{'resuming from' if subcommand == 'fit' else 'using'} {found}")
        return found
    if subcommand == "fit":
        raise ConfigError("--ckpt_path best cannot resume training: use --ckpt_path last, or a checkpoint file")
    runs_with_best = [p for p in runs.glob("version_*/checkpoints/best.ckpt") if p.parts[-3][8:].isdigit()]
    if not runs_with_best:
        raise ConfigError(
            f"--ckpt_path best: no best.ckpt in {runs}/version_*/checkpoints/; train first, or give a checkpoint"
        )
    found = max(runs_with_best, key=lambda p: int(p.parts[-3][8:]))
    rank_zero_info(f"using {found}")
    return found


def check_checkpoint_class(ckpt: str, configured: str | None) -> None:
    """Refuse a checkpoint whose ``_class_path`` is not a lit_transfer model or the class the config names.

    LightningCLI would import whatever module the checkpoint names (running a ``.py`` file shipped beside it);
    the class is checked by name, before anything is imported.
    """
    state = checkpoint_state(ckpt)  # an unreadable one is reported where it is loaded
    hparams = state.get("hyper_parameters") if state is not None else None
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if not class_path or class_path in MODEL_CLASSES or class_path == configured:
        return
    raise ConfigError(f"--ckpt_path {ckpt!r}: {refuse_unknown_class(str(class_path))}")


def check_checkpoint_backbone(ckpt: str, configured: Any) -> None:
    """Refuse a checkpoint whose backbone is a user module that the config does not name (nothing is imported).

    ``configured`` is the config's ``model.init_args.backbone`` (a name, or a ``BackboneSpec`` / mapping).
    """
    state = checkpoint_state(ckpt)
    own = checkpoint_backbone_class(state) if state is not None else None
    if own is None:
        return
    named = getattr(configured, "class_path", None) or (
        configured.get("class_path") if isinstance(configured, dict | Namespace) else None
    )
    if named != own:
        raise ConfigError(
            f"--ckpt_path {ckpt!r}: "
            + refuse_untrusted_backbone(own, "the checkpoint", f"model.backbone.class_path: {own} in the config")
        )


def refuse_finished(ckpt: str, trainer: Any) -> None:
    """Resuming a run that already reached ``max_epochs``/``max_steps`` would train nothing and say nothing."""
    state = checkpoint_state(ckpt) or {}
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs_done, steps_done = progress.get("processed", state.get("epoch", 0)), state.get("global_step", 0)
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs:  # Lightning stops at either limit
        raise ConfigError(
            f"--ckpt_path {ckpt!r} has already trained {epochs_done} epochs, and --trainer.max_epochs is {max_epochs}: "
            "nothing is left to train. Raise --trainer.max_epochs to continue, or use validate/test/predict with it"
        )
    if max_steps is not None and max_steps > 0 and steps_done >= max_steps:
        raise ConfigError(
            f"--ckpt_path {ckpt!r} has already trained {steps_done} steps, and --trainer.max_steps is {max_steps}: "
            "nothing is left to train. Raise --trainer.max_steps to continue"
        )


def resumed_version(ckpt: str, runs: Path) -> int | None:
    """The ``N`` of ``runs/version_N/checkpoints/ckpt``, the run a ``fit`` from ``ckpt`` continues in; else None."""
    folder = Path(ckpt).resolve().parent
    if folder.name == "checkpoints" and folder.parent.parent == runs.resolve():
        name = folder.parent.name
        if name.startswith("version_") and name[len("version_") :].isdigit():
            return int(name[len("version_") :])
    return None


def checkpoint_samples(datamodule: Any, ckpt: str) -> list[Any] | None:
    """The split manifest a checkpoint stores for ``datamodule``, or ``None`` when it has none."""
    state = checkpoint_state(ckpt)  # an unreadable checkpoint is reported where it is loaded
    if state is None or not hasattr(datamodule, "_saved_samples"):
        return None
    entry = state.get(type(datamodule).__qualname__)
    try:
        return datamodule._saved_samples(entry) if isinstance(entry, dict) and "manifest" in entry else None
    except (KeyError, TypeError, ValueError):
        return None


def check_resume_data(datamodule: Any, ckpt: str) -> None:
    """Refuse a resume whose data changed before the trainer starts, so no run file is rewritten.

    Checked again when the trainer restores the checkpoint; here it runs before ``config.yaml`` and
    ``split_manifest.csv`` of the resumed run are written.
    """
    state = checkpoint_state(ckpt)
    entry = state.get(type(datamodule).__qualname__) if state is not None else None
    check = getattr(datamodule, "resumed_samples", None)
    if not isinstance(entry, dict) or "manifest" not in entry or check is None:
        return
    try:
        check(entry, warn=False)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"--ckpt_path {ckpt!r}: {err}") from err
