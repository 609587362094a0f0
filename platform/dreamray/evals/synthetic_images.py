"""Folders of small, varied synthetic images (sizes, modes, PNG/JPEG) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (PIL mode, file extension): every mode a real folder may hold that clean-fid reads as RGB.
_KINDS = (("RGB", "png"), ("RGB", "jpg"), ("L", "png"), ("L", "jpeg"), ("RGBA", "png"),
          ("P", "png"), ("CMYK", "jpg"), ("RGB", "JPG"))  # fmt: skip


def write_varied_images(
    folder: str | Path,
    n: int,
    seed: int,
    min_size: int = 32,
    max_size: int = 96,
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> list[Path]:
    """Write `n` random images of random sizes, modes and formats into `folder`.

    Each image is a colour gradient plus a random rectangle plus noise; `tint` shifts the colour
    distribution so that two folders with different tints have clearly different statistics.

    Args:
        folder: created if missing.
        n: number of images.
        seed: RNG seed (the same seed writes the same files).
        min_size: smallest side in pixels.
        max_size: largest side in pixels.
        tint: added to the RGB channels, in [0, 1] units.

    Returns:
        The paths written, in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        mode, ext = _KINDS[rng.integers(len(_KINDS))]
        image = Image.fromarray(_pixels(rng, min_size, max_size, tint))
        image = image.convert(mode) if mode != "P" else image.quantize(colors=32)
        path = folder / f"img_{i:05d}.{ext}"
        save_kwargs = {"quality": int(rng.integers(60, 96))} if ext.lower() != "png" else {}
        image.save(path, format="JPEG" if ext.lower() != "png" else "PNG", **save_kwargs)
        paths.append(path)
    return paths


def _pixels(
    rng: np.random.Generator, min_size: int, max_size: int, tint: tuple[float, float, float]
) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0, 1, size=3)
    direction = rng.normal(size=(2, 3))
    img = base + yy[..., None] * direction[0] + xx[..., None] * direction[1]
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 1, size=3)
    img = img + np.asarray(tint) + rng.normal(scale=0.08, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)
