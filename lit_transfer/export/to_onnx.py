"""Writing the export graph as ONNX, with the metadata as ``metadata_props``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lit_transfer.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportModule, quiet_deprecations

DEFAULT_OPSET = 17


def export_onnx(module: ExportModule, example: torch.Tensor, path: Path, metadata: dict[str, Any], opset: int) -> None:
    """Write ``module`` as ONNX (dynamic batch) with ``metadata`` as JSON-encoded ``metadata_props``."""
    import onnx

    batch = {0: "batch"}
    with quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,  # the torch.export-based exporter needs onnxscript; this one needs nothing more
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = f"lit_transfer export of {metadata['checkpoint']}: uint8 NCHW RGB images → logits, probabilities"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
