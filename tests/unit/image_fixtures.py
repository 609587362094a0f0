"""Encoded test images shared by the data tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def random_png(seed: int, height: int = 12, width: int = 20) -> bytes:
    """A small PNG of uniform noise, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
