"""Rotation geometry for RotNet: exact, leak-free rotations of square images, and the naive rotation of seed 000.

A rotation-prediction network must learn the angle from the image content, not from what the rotation did to the
pixels. ``naive`` (seed 000) rotates the whole image with bilinear interpolation: the black corners of every 45°
rotation, and the blur of interpolating only some classes, tell the angle's parity without looking at the content.

``safe`` makes every class the *same* operation applied to the same band-limited image, so the classes differ by
the rotation of the content and nothing else:

1. the source is a square of side :func:`source_size` (about ``image_size * sqrt(2) + 16``), reflect-padded,
   low-passed by an isotropic raised-cosine filter (flat to 0.5, zero from 0.75 of the Nyquist frequency, see
   ``BAND_INNER``) and tapered to zero in the padding;
2. multiples of 90° are ``rot90`` (no interpolation); the remaining angle in (-45°, 45°] is three shears (Paeth),
   each a per-row fractional shift by an FFT phase ramp, i.e. exact sinc interpolation. A shear widens the spectrum
   by up to 8.2 % (``sqrt(1 + tan(22.5°)^2)``) before the next one resamples it, so the low-pass (below 0.924) is
   what makes the three passes an exact rotation rather than an approximation: against analytic rotations of a
   smooth spot the error is 0.02 grey levels (of 255) at 32 px and 0.0001 at 224 px, and two 45° turns of white
   noise equal ``rot90`` to 0.02 grey levels at 32 px (without the low-pass: tens of grey levels);
3. every class is cropped to the same central square of side ``image_size``, which lies inside the source for any
   angle (the inscribed square of a 45° rotation, less ``CROP_MARGIN``), so no padding or corner is ever seen.

The price is detail: views carry frequencies up to 0.75 of their Nyquist frequency. A 45° view costs about 16 ms at
224 px on one core, a 90° one 4 ms, all eight of one image 22 ms (they share one shear rotation).

Angles are in degrees, counter-clockwise, as in ``torchvision.transforms.functional.rotate`` and ``torch.rot90``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

GEOMETRIES: tuple[str, ...] = ("safe", "naive")

# Radial low-pass of the safe geometry, as fractions of the Nyquist frequency: flat below INNER, zero above OUTER.
# OUTER must stay below 1 / sqrt(1 + tan(22.5°)^2) = 0.924 for the three shears to be exact, and low enough that the
# square pixel grid a source was resampled on no longer shows: its orientation lives in the highest frequencies and
# turns with the content. Measured on 1500 resized noise images at 32 px, the power spectra of odd and even classes
# differ with 0.7-0.92 (mean z^2 2.45 over the frequencies, 1.0 for none) and agree with 0.5-0.75 (1.0).
BAND_INNER = 0.5
BAND_OUTER = 0.75
# Pixels between the crop's corners and the source's edge at 45°: the low-pass reaches about this far, and closer to
# the edge the reflect padding shows in the odd classes' corners (spectra differ with 2 and 5 px, agree with 8).
CROP_MARGIN = 8


def _is_fast_fft_size(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def source_size(image_size: int, geometry: str = "safe", right_angles_only: bool = False) -> int:
    """Side of the square source image that is rotated and cropped to ``image_size``.

    ``naive`` rotates the ``image_size`` image itself, and so does ``safe`` when every angle is a multiple of 90°
    (``rot90`` is exact and has no corners). Otherwise the source is large enough that the central ``image_size``
    crop stays ``CROP_MARGIN`` pixels inside it at 45°, with ``source - image_size`` even so that the crop and the
    rotations share one centre.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown rotation geometry {geometry!r}; use one of {list(GEOMETRIES)}")
    if geometry == "naive" or right_angles_only:
        return image_size
    size = math.ceil(image_size * math.sqrt(2) + 2 * CROP_MARGIN)
    return size + (size - image_size) % 2


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` square of ``(..., H, W)`` images; ``H - size`` and ``W - size`` must be even."""
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    if (x.shape[-2] - size) % 2 or (x.shape[-1] - size) % 2 or top < 0 or left < 0:
        raise ValueError(f"cannot center-crop {tuple(x.shape[-2:])} to {size} without a half-pixel shift")
    return x[..., top : top + size, left : left + size]


@lru_cache(maxsize=32)
def _band_window(height: int, width: int, inner: float, outer: float, dtype: torch.dtype) -> torch.Tensor:
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None] * 2  # in units of the Nyquist frequency
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :] * 2
    t = ((torch.sqrt(fx**2 + fy**2) - inner) / (outer - inner)).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(dtype)


def band_limit(x: torch.Tensor, inner: float = BAND_INNER, outer: float = BAND_OUTER) -> torch.Tensor:
    """Isotropic raised-cosine low-pass of ``(..., H, W)`` float images (periodic: pad first)."""
    height, width = x.shape[-2:]
    window = _band_window(height, width, inner, outer, x.dtype).to(x.device)
    return torch.fft.irfft2(torch.fft.rfft2(x) * window, s=(height, width))


@lru_cache(maxsize=32)
def _taper(size: int, flat: float, dtype: torch.dtype) -> torch.Tensor:
    """1 within ``flat`` pixels of the centre, a raised cosine down to 0 at the border."""
    distance = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2).abs()
    t = ((distance - flat) / (size / 2 - flat)).clamp(0, 1)
    w = 0.5 * (1 + torch.cos(math.pi * t))
    return (w[:, None] * w[None, :]).to(dtype)


@lru_cache(maxsize=8)  # binned angles never repeat: keep only the 45° steps' few (1.6 MB each at 224 px)
def _phase_ramp(length: int, lines: int, factor: float, dtype: torch.dtype) -> torch.Tensor:
    shifts = factor * (torch.arange(lines, dtype=torch.float64) - (lines - 1) / 2)
    freqs = torch.fft.rfftfreq(length, dtype=torch.float64)
    ramp = torch.exp(-2j * math.pi * shifts[:, None] * freqs[None, :])
    return ramp.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def shear_rows(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Shift row ``i`` of ``(..., H, W)`` images right by ``factor * (i - (H - 1) / 2)`` pixels (sinc, circular)."""
    height, width = x.shape[-2:]
    ramp = _phase_ramp(width, height, float(factor), x.dtype).to(x.device)
    return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * ramp, n=width, dim=-1)


def shear_rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate ``(..., P, P)`` images by ``angle`` in [-45°, 45°] about their centre with three FFT shears.

    Exact for content band-limited as :func:`band_limit` leaves it and surrounded by enough zeros that no shear
    wraps it around (``P >= 1.42`` times its support, see :func:`rotation_canvas`).
    """
    theta = math.radians(angle)
    along_x, along_y = math.tan(theta / 2), -math.sin(theta)
    x = shear_rows(x, along_x)
    x = shear_rows(x.transpose(-1, -2), along_y).transpose(-1, -2)
    return shear_rows(x, along_x)


def rotation_canvas(support: int) -> int:
    """A fast FFT size, at least ``sqrt(2)`` times ``support`` and of its parity, for :func:`shear_rotate`."""
    size = math.ceil(support * 1.42)
    while (size - support) % 2 or not _is_fast_fft_size(size):
        size += 1
    return size


def split_angle(angle: float) -> tuple[int, float]:
    """``angle`` as quarter turns plus a remainder in (-45°, 45°].

    Ties go to +45°, so every odd multiple of 45° is the same shear rotation turned by ``rot90``.
    """
    turns = math.ceil((angle - 45) / 90)
    return turns % 4, angle - 90 * turns


def source_padding(side: int) -> int:
    """Reflect padding of a ``side`` px source before the low-pass: about 10 % of the side, a fast FFT size in all."""
    pad = math.ceil(0.1 * side) + 4
    while not _is_fast_fft_size(side + 2 * pad):
        pad += 1
    return min(pad, side - 1)  # reflect padding must be shorter than the image


def prepare_source(image: torch.Tensor) -> torch.Tensor:
    """Reflect-pad a ``(..., C, S, S)`` float source, band-limit it and taper the padding to zero.

    The padding is :func:`source_padding`; the taper is 1 over the whole source, so the crop never sees it.
    """
    side = image.shape[-1]
    pad = source_padding(side)
    flat = image.reshape(-1, *image.shape[-3:])  # reflect padding wants (N, C, H, W)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    limited = band_limit(padded.reshape(*image.shape[:-2], *padded.shape[-2:]))
    return limited * _taper(side + 2 * pad, side / 2, limited.dtype).to(limited.device)


def safe_rotations(image: torch.Tensor, angles: Sequence[float], output_size: int) -> torch.Tensor:
    """Exact rotations of a band-limited square source, each cropped to the central ``output_size`` square.

    Args:
        image: ``(..., C, S, S)`` float images, ``S`` from :func:`source_size`.
        angles: degrees, counter-clockwise.
        output_size: side of the crops.

    Returns:
        ``(len(angles), ..., C, output_size, output_size)`` float images. Angles that share a remainder modulo 90°
        share one shear rotation, so all eight 45° steps cost one.
    """
    parts = [split_angle(a) for a in angles]
    if all(abs(rest) < 1e-9 for _, rest in parts) and image.shape[-1] == output_size:
        return torch.stack([torch.rot90(image, turns, dims=(-2, -1)) for turns, _ in parts])
    prepared = prepare_source(image)
    support = prepared.shape[-1]
    canvas = rotation_canvas(support)
    rotated: dict[float, torch.Tensor] = {}
    out = []
    for turns, rest in parts:
        key = round(rest, 9)
        if key not in rotated:
            if abs(rest) < 1e-9:
                rotated[key] = center_crop(prepared, output_size)
            else:
                edge = (canvas - support) // 2
                rotated[key] = center_crop(shear_rotate(F.pad(prepared, (edge, edge, edge, edge)), rest), output_size)
        out.append(torch.rot90(rotated[key], turns, dims=(-2, -1)))
    return torch.stack(out)


def naive_rotations(image: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
    """Seed 000's rotation: the whole image, bilinear, same size, black corners; ``(len(angles), ..., C, H, W)``."""
    return torch.stack(
        [TF.rotate(image, float(a), interpolation=InterpolationMode.BILINEAR, expand=False, fill=0.0) for a in angles]
    )


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 255] rounded to ``uint8`` (interpolation overshoot clipped)."""
    return x.round().clamp_(0, 255).to(torch.uint8)


def rotate_views(
    image: torch.Tensor, angles: Sequence[float], geometry: str = "safe", output_size: int | None = None
) -> torch.Tensor:
    """Rotated views of one square source image, the way the RotNet data module makes them.

    Args:
        image: ``(C, S, S)`` ``uint8`` (or float in [0, 255]) source, ``S = source_size(output_size, geometry, …)``.
        angles: degrees, counter-clockwise.
        geometry: ``safe`` (exact, band-limited, cropped) or ``naive`` (bilinear, full image, black corners).
        output_size: side of the views; default: the source's side.

    Returns:
        ``(len(angles), C, output_size, output_size)`` ``uint8`` views.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown rotation geometry {geometry!r}; use one of {list(GEOMETRIES)}")
    size = image.shape[-1] if output_size is None else output_size
    if image.shape[-2] != image.shape[-1]:
        raise ValueError(f"rotations need a square source, got {tuple(image.shape[-2:])}")
    x = image.float()
    views = naive_rotations(x, angles) if geometry == "naive" else safe_rotations(x, angles, size)
    if views.shape[-1] != size:
        raise ValueError(
            f"a {geometry} rotation of a {image.shape[-1]} px source gives {views.shape[-1]} px, not {size}"
        )
    return to_uint8(views)
