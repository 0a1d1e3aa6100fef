"""How a photo becomes a RotNet source square and its ``predict`` view, as a transform and as plain values."""

from __future__ import annotations

import math
from typing import Any, Literal

from torchvision.transforms import v2

from lit_transfer.data.rotation import BAND_INNER, BAND_OUTER, source_padding, source_size
from lit_transfer.data.rotnet_classes import AngleMode
from lit_transfer.data.transforms import Transform

Geometry = Literal["safe", "naive"]
SquareMode = Literal["crop", "resize"]


def predict_preprocessing(
    image_size: int,
    num_rotations: int = 8,
    angle_mode: AngleMode = "discrete",
    geometry: Geometry = "safe",
    square: SquareMode = "crop",
    decode_scale: float | None = 2.0,
    source_side: int | None = None,
) -> dict[str, Any]:
    """How :class:`RotNetDataModule` makes the ``predict`` view (the 0° view) of a photo, as plain values.

    The view is: the photo decoded (a large JPEG at a reduced size whose shorter side is at least
    ``decode_min_side``), made a ``source_size`` square (``square``: short side resized and the centre cropped, or
    squashed; antialiased bilinear), then, when ``low_pass`` is set, reflect-padded by ``low_pass["pad"]``,
    low-passed by the isotropic raised cosine (flat to ``inner``, zero from ``outer`` of the Nyquist frequency) and
    rounded; finally the central ``image_size`` square. The ``naive`` geometry and exact ``rot90`` rotations
    (4 discrete classes) use no low-pass and a source of ``image_size``. ``source_side`` overrides the source size.
    """
    right_angles_only = num_rotations == 4 and angle_mode == "discrete"
    side = int(source_side or source_size(image_size, geometry, right_angles_only))
    filtered = geometry == "safe" and side != image_size  # what rotation.safe_rotations does for a 0° view
    return {
        "geometry": geometry,
        "square": square,
        "num_rotations": int(num_rotations),
        "angle_mode": angle_mode,
        "image_size": int(image_size),
        "source_size": side,
        "low_pass": (
            {"inner": BAND_INNER, "outer": BAND_OUTER, "pad": source_padding(side), "padding": "reflect"}
            if filtered
            else None
        ),
        "decode_scale": decode_scale,
        "decode_min_side": None if decode_scale is None else math.ceil(decode_scale * side),
    }


def square_transform(size: int, square: SquareMode = "crop") -> Transform:
    """PIL image → ``uint8`` square of side ``size``: the centre square of the photo, or the whole photo squashed."""
    if square == "crop":
        return v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])
