"""Export a checkpoint to ONNX or TorchScript with its metadata, and check the export against PyTorch.

``python -m lit_transfer export --ckpt_path X [--format onnx|torchscript] [--out FILE] [--tolerance 1e-4]``

The model is rebuilt from the checkpoint alone (class, hyperparameters, weights; nothing is downloaded). The exported
graph takes ``uint8`` RGB images ``(N, 3, image_size, image_size)`` with any batch size ``N``, normalizes them
inside (as the model does) and returns two outputs: ``logits`` and ``probabilities`` (softmax over classes of the
logits divided by the model's ``temperature``: 1, or the one ``--calibrate temperature`` fitted). Both are kept:
probabilities are what most users want, logits are what calibration, ensembling and margins need, and the softmax
costs nothing.

The file carries what a user needs besides the weights (:func:`build_metadata`): class names, input size, the eval
resize size, mean/std, the temperature, and for a RotNet model the angle of each class and the preprocessing of its
data module's ``predict`` view (``square``, ``low_pass``, ``decode_min_side``, ``rotation``: see
:func:`rotation_preprocessing`).
ONNX stores them as ``metadata_props``, one JSON-encoded value per key; TorchScript as the extra file
``metadata.json`` (one JSON object with the same keys). :mod:`lit_transfer.inference` reads either and predicts on
image files with that preprocessing.

After writing, the file is loaded back (onnxruntime, or ``torch.jit.load``) and run against the PyTorch model on
random ``uint8`` batches of several sizes; the largest absolute difference of either output is reported. Above
``--tolerance`` the command exits with status 1 and the file is kept only as ``<name>.parity_failed<suffix>``
(whatever was at ``--out`` before stays untouched). A missing or unreadable checkpoint exits with status 2.

The package, one concept a module: :mod:`~lit_transfer.export.rebuild` (checkpoint → model, the allowed model
classes), :mod:`~lit_transfer.export.metadata` (what the file carries, RotNet views), :mod:`~lit_transfer.export.graph`
(the exported module, input and output names), :mod:`~lit_transfer.export.to_onnx`,
:mod:`~lit_transfer.export.to_torchscript`, :mod:`~lit_transfer.export.parity`, :mod:`~lit_transfer.export.pipeline`
(:func:`export_checkpoint`) and :mod:`~lit_transfer.export.command` (``main``).
"""

from lit_transfer.export.command import build_parser, main
from lit_transfer.export.graph import DEFAULT_SUFFIX, INPUT_NAME, OUTPUT_NAMES, ExportFormat, ExportModule
from lit_transfer.export.metadata import (
    FORMAT_VERSION,
    build_metadata,
    class_angles,
    eval_resize_size,
    rotation_preprocessing,
)
from lit_transfer.export.parity import (
    DEFAULT_TOLERANCE,
    PARITY_BATCH_SIZES,
    ParityError,
    check_parity,
    exported_runner,
    sample_batches,
)
from lit_transfer.export.pipeline import ExportResult, default_out, export_checkpoint, failed_path
from lit_transfer.export.rebuild import (
    MODEL_CLASSES,
    CheckpointError,
    load_checkpoint,
    model_class,
    rebuild_model,
    refuse_unknown_class,
)
from lit_transfer.export.to_onnx import DEFAULT_OPSET, export_onnx
from lit_transfer.export.to_torchscript import TORCHSCRIPT_METADATA_FILE, export_torchscript

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_SUFFIX",
    "DEFAULT_TOLERANCE",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "MODEL_CLASSES",
    "OUTPUT_NAMES",
    "PARITY_BATCH_SIZES",
    "TORCHSCRIPT_METADATA_FILE",
    "CheckpointError",
    "ExportFormat",
    "ExportModule",
    "ExportResult",
    "ParityError",
    "build_metadata",
    "build_parser",
    "check_parity",
    "class_angles",
    "default_out",
    "eval_resize_size",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
    "exported_runner",
    "failed_path",
    "load_checkpoint",
    "main",
    "model_class",
    "rebuild_model",
    "refuse_unknown_class",
    "rotation_preprocessing",
    "sample_batches",
]
