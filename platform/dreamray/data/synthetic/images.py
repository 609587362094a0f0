"""Deterministic encoded images for the synthetic sources: good ones in varied sizes and modes,
and the bad ones the converters must reject."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# Modes real crawls contain. All of them decode, so converters keep them (bytes unchanged).
GOOD_KINDS = ("rgb_jpeg", "gray_jpeg", "cmyk_jpeg", "rgba_png", "i16_png", "palette_png")


def _pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth gradients plus noise: compresses like a photo rather than like pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(0.01, 0.08, size=3)
    chans = [127 + 100 * np.sin(freq[c] * x + phase[c]) * np.cos(freq[c] * y) for c in range(3)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def make_image(
    rng: np.random.Generator, kind: str, min_side: int = 24, max_side: int = 96
) -> bytes:
    """Encode a small synthetic image of the given kind.

    Args:
        rng: numpy generator (the only source of randomness, so output is deterministic).
        kind: one of GOOD_KINDS.
        min_side: smallest side in pixels.
        max_side: largest side in pixels.

    Returns:
        The encoded bytes.

    Raises:
        ValueError: for an unknown kind.
    """
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    rgb = Image.fromarray(_pixels(rng, width, height), "RGB")
    if kind == "rgb_jpeg":
        return _encode(rgb, "JPEG", quality=90)
    if kind == "gray_jpeg":
        return _encode(rgb.convert("L"), "JPEG", quality=90)
    if kind == "cmyk_jpeg":
        return _encode(rgb.convert("CMYK"), "JPEG", quality=90)
    if kind == "rgba_png":
        return _encode(rgb.convert("RGBA"), "PNG")
    if kind == "i16_png":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return _encode(Image.fromarray(gray), "PNG")
    if kind == "palette_png":
        return _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG")
    raise ValueError(f"unknown image kind {kind!r}; known: {GOOD_KINDS}")


def realistic_jpeg(rng: np.random.Generator, side: int = 512, quality: int = 90) -> bytes:
    """A photo-like RGB JPEG of about `side` pixels (for benchmarks: decode dominates).

    Args:
        rng: numpy generator.
        side: the longer side in pixels.
        quality: JPEG quality.

    Returns:
        The encoded bytes.
    """
    height = int(side * rng.uniform(0.66, 1.0))
    return _encode(Image.fromarray(_pixels(rng, side, height), "RGB"), "JPEG", quality=quality)


def undecodable_bytes(rng: np.random.Generator) -> bytes:
    """Random bytes that no image plugin recognises.

    Args:
        rng: numpy generator.

    Returns:
        Bytes starting with a text marker (so no format's magic number matches).
    """
    return b"not an image:" + rng.bytes(64)


def truncated_image(rng: np.random.Generator) -> bytes:
    """A JPEG cut in the middle of its entropy-coded data.

    Args:
        rng: numpy generator.

    Returns:
        The first half of a valid JPEG.
    """
    data = make_image(rng, "rgb_jpeg", 48, 64)
    return data[: len(data) // 2]


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def bomb_png(side: int = 60000) -> bytes:
    """A tiny PNG whose header declares side x side RGB pixels (a decompression bomb).

    Args:
        side: declared width and height.

    Returns:
        A syntactically valid PNG of a few hundred bytes.
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def bad_image(rng: np.random.Generator, reason: str) -> bytes:
    """The bytes of a planted image fault.

    Args:
        rng: numpy generator.
        reason: image_undecodable | image_truncated | image_decompression_bomb | image_empty.

    Returns:
        The bad bytes.

    Raises:
        ValueError: for a reason that is not an image-bytes fault.
    """
    makers = {
        "image_undecodable": lambda: undecodable_bytes(rng),
        "image_truncated": lambda: truncated_image(rng),
        "image_decompression_bomb": bomb_png,
        "image_empty": lambda: b"",
    }
    if reason not in makers:
        raise ValueError(f"not an image-bytes fault: {reason!r}")
    return makers[reason]()
