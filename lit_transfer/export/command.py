"""``lit_transfer export``: the command line of :func:`lit_transfer.export.export_checkpoint`.

``python -m lit_transfer export --ckpt_path X [--format onnx|torchscript] [--out FILE] [--tolerance 1e-4]``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from lit_transfer.export.graph import OUTPUT_NAMES, ExportFormat
from lit_transfer.export.parity import DEFAULT_TOLERANCE
from lit_transfer.export.pipeline import export_checkpoint
from lit_transfer.export.rebuild import CheckpointError
from lit_transfer.export.to_onnx import DEFAULT_OPSET

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    """Arguments of ``lit_transfer export``: those of :func:`export`, as the command front parses them."""
    from lit_transfer.commands import build_parser as command_parser

    return command_parser("export")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lit_transfer.export``: the same as ``python -m lit_transfer export``."""
    from lit_transfer.commands import run
    from lit_transfer.core.errors import ConfigError

    try:
        run("export", sys.argv[1:] if argv is None else list(argv))
    except ConfigError as err:
        print(f"lit_transfer: configuration error: {err}", file=sys.stderr)
        sys.exit(2)


def export(
    ckpt_path: str,
    format: ExportFormat = "onnx",
    out: str | None = None,
    tolerance: NonNegativeFloat = DEFAULT_TOLERANCE,
    opset: PositiveInt = DEFAULT_OPSET,
    image_size: PositiveInt | None = None,
    resize_size: PositiveInt | None = None,
    trust_backbone: str | None = None,
) -> None:
    """Export a checkpoint to ONNX or TorchScript, and check the exported file against the PyTorch model.

    The exported model takes uint8 NCHW images and returns logits and probabilities; the checkpoint's class names,
    input size, resize size, mean/std and RotNet angles go into it as metadata. Exit status 1 when the parity check
    fails (above ``--tolerance``), 2 on a checkpoint that cannot be exported.

    Args:
        ckpt_path: lit_transfer checkpoint to export.
        format: onnx or torchscript.
        out: output file or folder; default: beside the checkpoint.
        tolerance: largest absolute difference from PyTorch accepted; exit status 1 above it.
        opset: ONNX opset.
        image_size: input size if the checkpoint lacks it.
        resize_size: override the recorded eval resize.
        trust_backbone: the class path of the checkpoint's own backbone module (``my_pkg.MyNet``), to import it:
            a checkpoint alone never chooses code to run.
    """
    try:
        result = export_checkpoint(
            ckpt_path, format, out, tolerance, opset, image_size, resize_size, trust_backbone=trust_backbone
        )
    except CheckpointError as err:
        print(f"lit_transfer export: error: {err}", file=sys.stderr)
        sys.exit(2)
    meta = result.metadata
    runtime = "onnxruntime" if result.format == "onnx" else "TorchScript"
    diffs = ", ".join(f"{name} {value:.2e}" for name, value in result.max_abs_diff.items())
    sizes = ", ".join(str(n) for n in result.batch_sizes)
    print(
        f"{result.format} export of {meta['model_class'].rsplit('.', 1)[-1]} ({meta['backbone']}, "
        f"{meta['num_classes']} classes, {meta['task']}): input uint8 [batch, 3, {meta['image_size']}, "
        f"{meta['image_size']}], outputs {' + '.join(OUTPUT_NAMES)}, eval resize {meta['resize_size']}"
    )
    rotation = meta.get("rotation")
    if rotation:
        low_pass = "low-passed" if rotation["low_pass"] else "no low-pass"
        print(
            f"preprocessing recorded: the RotNet predict view ({rotation['geometry']} geometry, square "
            f"{rotation['square']}, {rotation['source_size']} px source, {low_pass}, center crop {meta['image_size']})"
        )
    verdict = "ok" if result.passed else "FAILED"
    found = f"error: {result.error}" if result.error else f"max |diff| {diffs}"
    print(
        f"parity {runtime} vs PyTorch on random uint8 batches of {sizes}: {found} "
        f"(tolerance {result.tolerance:g}): {verdict}"
    )
    if not result.passed:
        why = result.error or f"differs from PyTorch by {result.worst:.3e} > {result.tolerance:g}"
        print(
            f"lit_transfer export: the exported model {why}; kept as {result.path} for inspection, nothing written "
            "to the output path",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"wrote {result.path}")


if __name__ == "__main__":
    main()
