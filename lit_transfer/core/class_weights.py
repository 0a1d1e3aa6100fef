"""Class labels as arrays, and the inverse-frequency loss weights the model derives from the training labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Labels = Sequence[int] | np.ndarray | torch.Tensor


def as_label_array(labels: Labels) -> np.ndarray:
    """``labels`` as a flat ``int64`` array; refuses anything but non-negative integer class indices."""
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    array = array.reshape(-1)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError("labels must be non-negative integer class indices")
    return array.astype(np.int64)


def inverse_frequency_weights(labels: Labels, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``n / (k * count)`` for ``k`` classes present; an absent class gets weight 0.

    With these weights every class present contributes the same total weight to the loss, and the weight averaged
    over the ``n`` training samples is one, so the loss keeps its scale (with every class present this is
    scikit-learn's ``class_weight="balanced"``).
    """
    array = as_label_array(labels)
    if array.size and array.max() >= num_classes:
        raise ValueError(f"label {int(array.max())} is out of range for num_classes={num_classes}")
    counts = np.bincount(array, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = array.size / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)
