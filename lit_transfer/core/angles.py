"""The RotNet angle codec: a rotation class is named by its angle (``0°``, ``45°``, ``22.5°``).

:func:`angle_name` writes a name, :func:`name_angle` reads one back; every place that turns names into angles (the
RotNet model's metrics, the prediction writer, the export, the data module) goes through :func:`class_angles` or
:func:`name_angle`, so what the data module writes is exactly what the rest reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEGREE = "°"
_ANGLE_NAME = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*°\s*$")


def angle_name(angle: float) -> str:
    """The class name of a rotation by ``angle`` degrees: ``45°``, ``22.5°`` (shortest form, ``:g``)."""
    return f"{angle:g}{DEGREE}"


def name_angle(name: object) -> float | None:
    """The angle a class name stands for (``"45°"`` → 45.0), or ``None`` when the name is not an angle."""
    match = _ANGLE_NAME.match(str(name))
    return float(match.group(1)) if match else None


def named_angles(class_names: Sequence[object]) -> list[float] | None:
    """Every class's angle when every name is an angle (as a RotNet data module names them), else ``None``."""
    angles = [name_angle(name) for name in class_names]
    if not angles or any(a is None for a in angles):
        return None
    return [float(a) for a in angles]  # type: ignore[arg-type]


def class_angles(class_names: Sequence[object]) -> list[float]:
    """Each class's angle: read from its name, or ``k * 360 / n`` when the names are not all angles."""
    angles = named_angles(class_names)
    if angles is not None:
        return angles
    return [k * 360 / len(class_names) for k in range(len(class_names))]
