"""RotNet's classes: one per rotation step, named by the angle that undoes it, and the bin of any angle."""

from __future__ import annotations

from typing import Literal

from lit_transfer.core.angles import angle_name

AngleMode = Literal["discrete", "binned"]


def rotation_class_names(num_rotations: int, angle_mode: AngleMode = "discrete") -> list[str]:
    """Class names ``0°, 45°, …``: each class's angle, in ``binned`` mode too (the centre of its bin).

    The names are the same in both modes (``angle_mode`` is accepted for symmetry): bins are centred on the
    multiples of the step, so class 0 is upright and the angle of class ``k`` is what undoes it.
    """
    step = 360 / num_rotations
    return [angle_name(k * step) for k in range(num_rotations)]


def angle_bin(angle: float, num_rotations: int) -> int:
    """The ``binned`` class of a counter-clockwise ``angle``: bin ``k`` covers ``[k·step - step/2, k·step + step/2)``.

    So 10° and 350° are class 0 (upright) and 30° class 1 with 45° steps.
    """
    step = 360 / num_rotations
    return int(((angle % 360) + step / 2) // step) % num_rotations
