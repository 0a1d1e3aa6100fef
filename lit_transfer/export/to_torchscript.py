"""Writing the export graph as traced TorchScript, with the metadata as the extra file ``metadata.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lit_transfer.export.graph import ExportModule, quiet_deprecations

TORCHSCRIPT_METADATA_FILE = "metadata.json"


def export_torchscript(module: ExportModule, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``module`` as traced TorchScript with ``metadata`` in the extra file ``metadata.json``."""
    with quiet_deprecations():
        with torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)  # parity is checked on the saved file
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
