"""Calibration: the expected calibration error, and temperature scaling fitted on validation logits.

A classifier is calibrated when among the images it gives a confidence (top-1 probability) of about ``p``, a share
``p`` is classified right. The expected calibration error (ECE) measures the gap: confidences are put in
:data:`ECE_BINS` equal bins of [0, 1] and the bins' ``|accuracy - mean confidence|`` are averaged, weighted by their
share of the images (torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")``, logged as ``val_ece`` and
``test_ece``).

Temperature scaling (Guo et al., 2017) divides the logits by one temperature ``T > 0`` fitted to minimize the
negative log-likelihood of the validation split: predictions (the arg-max) do not change, only how confident the
probabilities are. :func:`fit_temperature` fits ``log T`` with L-BFGS; :func:`calibrate` reports ECE and NLL before
and after.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15  # equal-width confidence bins of the ECE (torchmetrics' default, and the literature's)
MIN_TEMPERATURE = 0.01  # the fitted temperature is kept within these bounds: separable validation logits (all
MAX_TEMPERATURE = 100.0  # right, or all wrong) have no finite optimum, and their NLL falls all the way to T = 0


class SoftmaxCalibrationError(MulticlassCalibrationError):
    """``MulticlassCalibrationError`` of logits: the softmax is taken here, always.

    torchmetrics applies the softmax only when some value lies outside [0, 1], so a batch of small logits (an
    untrained head) would be taken for probabilities.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of logits ``(N, C)`` and true classes ``(N,)``."""
        super().update(preds.float().softmax(dim=1), target)


def expected_calibration_error(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> float:
    """The ECE (:data:`ECE_BINS` bins, L1) of ``softmax(logits / temperature)``, as ``val_ece`` computes it."""
    probs = (logits.double() / temperature).softmax(dim=1).float()
    num_classes = logits.shape[1]
    return float(multiclass_calibration_error(probs, targets.long(), num_classes, n_bins=ECE_BINS, norm="l1"))


def negative_log_likelihood(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature`` (in float64)."""
    return float(F.cross_entropy(logits.double() / temperature, targets.long()))


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(logits / T)`` for ``targets``.

    L-BFGS (strong Wolfe line search) over ``log T`` from ``T = 1``, in float64 on the CPU (deterministic); the
    result is clamped to [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`]. The NLL is convex in ``1 / T``, so the
    minimum found is the only one, and a clamped one is the best within the bounds.

    Args:
        logits: ``(N, C)`` logits (raw: not divided by any temperature yet).
        targets: ``(N,)`` true classes.
        max_iter: most L-BFGS iterations.

    Raises:
        ValueError: no samples, or logits and targets that do not match.
    """
    if logits.ndim != 2 or targets.ndim != 1 or len(logits) != len(targets):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected (N, C) and (N,)")
    if len(targets) == 0:
        raise ValueError("no validation samples to fit a temperature on")
    # copies: logits gathered in a validation run are inference tensors, which autograd refuses to save
    z = logits.detach().to("cpu", torch.float64).clone()
    y = targets.detach().to("cpu", torch.long).clone()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )
    bound = math.log(MAX_TEMPERATURE) + 1.0  # far enough past the clamp; keeps exp() finite on separable data

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t.clamp(-bound, bound)), y)
        loss.backward()
        return loss

    with torch.enable_grad():  # also when called under no_grad / inference mode (after a Trainer run)
        optimizer.step(closure)
    value = float(log_t.detach())
    if not math.isfinite(value):
        return 1.0
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, math.exp(value)))


@dataclass(frozen=True)
class CalibrationResult:
    """A fitted temperature and the validation split's ECE and NLL before (``T = 1``) and after it."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    samples: int
    accuracy: float  # top-1, which the temperature does not change

    @property
    def separable(self) -> bool:
        """Whether every sample is classified right: the NLL then falls all the way to ``T = 0``, without optimum."""
        return self.accuracy >= 1.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and ``run_summary.json``."""
        return asdict(self)


def calibrate(logits: Tensor, targets: Tensor) -> CalibrationResult:
    """Fit a temperature on ``logits`` (:func:`fit_temperature`) and measure ECE and NLL before and after.

    The temperature is rounded to float32, as the model stores it, before the "after" figures are computed.
    """
    temperature = float(torch.tensor(fit_temperature(logits, targets), dtype=torch.float32))
    return CalibrationResult(
        temperature=temperature,
        ece_before=expected_calibration_error(logits, targets),
        ece_after=expected_calibration_error(logits, targets, temperature),
        nll_before=negative_log_likelihood(logits, targets),
        nll_after=negative_log_likelihood(logits, targets, temperature),
        samples=len(targets),
        accuracy=float((logits.argmax(dim=1) == targets).double().mean()),
    )
