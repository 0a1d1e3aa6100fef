"""The font the PNG reports and plots are drawn with (Pillow only)."""

from __future__ import annotations

from PIL import ImageFont


def font(size: int = 11) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels; the fixed bitmap font when Pillow has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
