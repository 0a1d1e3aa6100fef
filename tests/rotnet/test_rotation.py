"""Rotation geometry: the safe rotation is exact (against analytic rotations and against rot90), the crop stays
inside the source, and angles are counter-clockwise like torchvision's and rot90's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lit_transfer.data.rotation import (
    CROP_MARGIN,
    center_crop,
    naive_rotations,
    prepare_source,
    rotate_views,
    rotation_canvas,
    safe_rotations,
    shear_rotate,
    source_size,
    split_angle,
)


def blob(size: int, dx: float, dy: float, sigma: float = 3.0) -> torch.Tensor:
    """A Gaussian spot ``(dx, dy)`` right of and below the centre of a ``size`` square, 3 channels, grey 40 + 200."""
    c = (size - 1) / 2
    axis = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    spot = torch.exp(-((x - c - dx) ** 2 + (y - c - dy) ** 2) / (2 * sigma**2))
    return (40 + 200 * spot).expand(3, size, size).clone()


def turned(dx: float, dy: float, angle: float) -> tuple[float, float]:
    """Where ``(dx, dy)`` (x right, y down) goes under a counter-clockwise turn by ``angle`` degrees on screen."""
    a = math.radians(angle)
    return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


@pytest.mark.parametrize("image_size", [8, 32, 33, 64, 224])
def test_source_size_keeps_the_crop_inside_the_source_at_45_degrees(image_size: int) -> None:
    side = source_size(image_size)
    assert (side - image_size) % 2 == 0  # crop and rotations share one centre
    # distance from a corner of the crop to the edge of the source turned by 45°
    assert side / 2 - image_size / math.sqrt(2) >= CROP_MARGIN
    assert source_size(image_size, "naive") == image_size
    assert source_size(image_size, "safe", right_angles_only=True) == image_size
    with pytest.raises(ValueError, match="geometry"):
        source_size(image_size, "bilinear")


@pytest.mark.parametrize("angle", [45, 90, 135, 180, 30, -20, 200, 315])
def test_safe_rotation_matches_the_analytic_rotation(angle: float) -> None:
    side, out = source_size(32), 32
    image = blob(side, dx=7.0, dy=-4.0)
    view = safe_rotations(image, [angle], out)[0]
    expected = center_crop(blob(side, *turned(7.0, -4.0, angle)), out)
    assert (view - expected).abs().max() < 0.5  # grey levels out of 255: exact, not merely close


def test_two_45_degree_shears_are_one_rot90() -> None:
    side = source_size(32)
    image = torch.rand(3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    prepared = prepare_source(image)
    edge = (rotation_canvas(prepared.shape[-1]) - prepared.shape[-1]) // 2
    big = F.pad(prepared, (edge,) * 4)
    twice = shear_rotate(shear_rotate(big, 45), 45)
    error = (center_crop(twice, 32) - center_crop(torch.rot90(big, 1, dims=(-2, -1)), 32)).abs()
    assert error.max() < 1.0 and error.mean() < 0.2  # on white noise, the hardest content
    back = shear_rotate(shear_rotate(big, 45), -45)
    assert (center_crop(back, 32) - center_crop(big, 32)).abs().max() < 1.0


def test_without_band_limit_the_shears_are_no_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the safe geometry low-passes: three shears alone alias white noise's diagonal frequencies."""
    import lit_transfer.data.rotation as rotation

    monkeypatch.setattr(rotation, "band_limit", lambda x, *args, **kwargs: x)
    side = source_size(32)
    image = torch.rand(3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    prepared = rotation.prepare_source(image)
    edge = (rotation_canvas(prepared.shape[-1]) - prepared.shape[-1]) // 2
    big = F.pad(prepared, (edge,) * 4)
    twice = shear_rotate(shear_rotate(big, 45), 45)
    error = (center_crop(twice, 32) - center_crop(torch.rot90(big, 1, dims=(-2, -1)), 32)).abs()
    assert error.mean() > 10


def test_right_angles_are_exact_rot90_of_the_band_limited_crop() -> None:
    side = source_size(32)
    image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    views = rotate_views(image, [0, 45, 90, 135, 180, 225, 270, 315], "safe", 32)
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.uint8
    for k in range(0, 8, 2):
        assert torch.equal(views[k], torch.rot90(views[0], k // 2, dims=(-2, -1)))
    for k in range(1, 8, 2):  # the odd classes share one shear rotation, turned by rot90
        assert torch.equal(views[k], torch.rot90(views[1], k // 2, dims=(-2, -1)))
    # four 90° classes of a full image need no crop and no filter: they are the pixels themselves
    full = rotate_views(image[:, :32, :32], [0, 90, 180, 270], "safe", 32)
    assert torch.equal(full[0], image[:, :32, :32]) and torch.equal(full[1], torch.rot90(image[:, :32, :32], 1, (1, 2)))


def test_angles_are_counter_clockwise_like_torchvision_and_rot90() -> None:
    image = blob(33, dx=9.0, dy=0.0)  # a spot right of the centre
    for view in (safe_rotations(image, [90], 33)[0], naive_rotations(image, [90])[0]):
        row, col = divmod(int(view[0].argmax()), 33)
        assert (row, col) == (16 - 9, 16)  # moved to the top
    reference = TF.rotate(image, 90.0, interpolation=InterpolationMode.BILINEAR)
    assert torch.allclose(naive_rotations(image, [90])[0], reference)


def test_naive_rotation_has_black_corners_only_at_45_degrees() -> None:
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    views = rotate_views(image, [0, 45, 90], "naive")
    assert views[1][:, 0, 0].max() == 0 and views[0][:, 0, 0].min() == 200 and views[2][:, 0, 0].min() == 200


def test_split_angle_and_crop_checks() -> None:
    assert split_angle(45) == (0, 45) and split_angle(135) == (1, 45) and split_angle(-30) == (0, -30)
    assert split_angle(350) == (0, -10) and split_angle(225) == (2, 45)
    with pytest.raises(ValueError, match="half-pixel"):
        center_crop(torch.zeros(3, 33, 33), 32)
    with pytest.raises(ValueError, match="square"):
        rotate_views(torch.zeros(3, 30, 32, dtype=torch.uint8), [0])
