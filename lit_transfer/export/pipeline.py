"""One export: checkpoint → model → metadata → ONNX or TorchScript file, kept only when its parity check passes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lit_transfer.export.graph import DEFAULT_SUFFIX, ExportFormat, ExportModule
from lit_transfer.export.metadata import build_metadata
from lit_transfer.export.parity import DEFAULT_TOLERANCE, PARITY_BATCH_SIZES, ParityError, check_parity
from lit_transfer.export.rebuild import load_checkpoint, rebuild_model
from lit_transfer.export.to_onnx import DEFAULT_OPSET, export_onnx
from lit_transfer.export.to_torchscript import export_torchscript


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and how closely it matches the PyTorch model."""

    path: Path
    format: ExportFormat
    metadata: dict[str, Any]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
    tolerance: float = DEFAULT_TOLERANCE
    error: str | None = None  # why the exported file could not be run on the parity batches

    @property
    def worst(self) -> float:
        """The largest absolute difference over both outputs."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether the exported file ran on every parity batch and matches the PyTorch model within the tolerance."""
        return self.error is None and self.worst <= self.tolerance


def default_out(ckpt_path: Path, fmt: ExportFormat) -> Path:
    """``<checkpoint without .ckpt>.onnx`` or ``.torchscript.pt``, beside the checkpoint."""
    stem = ckpt_path.name[: -len(ckpt_path.suffix)] if ckpt_path.suffix else ckpt_path.name
    return ckpt_path.with_name(stem + DEFAULT_SUFFIX[fmt])


def failed_path(out: Path) -> Path:
    """Where an export that failed its parity check is kept: ``<name>.parity_failed<suffix>``."""
    suffix = ".torchscript.pt" if out.name.endswith(".torchscript.pt") else out.suffix
    stem = out.name[: -len(suffix)] if suffix else out.name
    return out.with_name(f"{stem}.parity_failed{suffix}")


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: ExportFormat = "onnx",
    out: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    image_size: int | None = None,
    resize_size: int | None = None,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    trust_backbone: str | None = None,
) -> ExportResult:
    """Export a checkpoint and check the exported file against the PyTorch model.

    Args:
        ckpt_path: a lit_transfer checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (a folder gets the default name); default: beside the checkpoint.
        tolerance: largest absolute difference of logits or probabilities accepted.
        opset: ONNX opset version.
        image_size: input size when the checkpoint does not record it.
        resize_size: eval resize (short side) to record instead of the data module's default.
        batch_sizes: batch sizes of the random parity batches.
        trust_backbone: the class path of the checkpoint's own backbone module, to import it.

    Returns:
        The result; when it did not pass, the file is at :func:`failed_path` of ``out``, not at ``out``.

    Raises:
        CheckpointError: missing or unreadable checkpoint, or one that cannot be rebuilt.
    """
    if fmt not in DEFAULT_SUFFIX:
        raise ValueError(f"format {fmt!r}: use one of {sorted(DEFAULT_SUFFIX)}")
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    model = rebuild_model(ckpt, source=f"checkpoint {str(ckpt_path)!r}", trusted_backbone=trust_backbone)
    metadata = build_metadata(model, ckpt, ckpt_path, image_size, resize_size)
    target = Path(out) if out is not None else default_out(ckpt_path, fmt)
    if target.is_dir():
        target = target / default_out(ckpt_path, fmt).name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    size = metadata["image_size"]
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # batch 2, so batch 1 and others are checked as dynamic
    module = ExportModule(model).eval()
    try:
        if fmt == "onnx":
            export_onnx(module, example, tmp, metadata, opset)
        else:
            export_torchscript(module, example, tmp, metadata)
        result = ExportResult(tmp, fmt, metadata, tolerance=tolerance, batch_sizes=tuple(batch_sizes))
        try:
            result.max_abs_diff = check_parity(model, tmp, fmt, size, batch_sizes)
        except ParityError as err:
            result.error = str(err)
        result.path = target if result.passed else failed_path(target)
        os.replace(tmp, result.path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return result
