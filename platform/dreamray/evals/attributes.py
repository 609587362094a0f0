"""A deterministic attribute reader for images of the shapes world, and its scoring.

The reader segments the saturated foreground from the unsaturated background, splits it into
connected components and reads each one: colour from the circular mean hue (nearest palette
hue), position from the centroid (nearest anchor), shape from how much of its bounding box it
fills (square ~1, circle ~pi/4, triangle ~1/2). An image it cannot read gets a reason, which the
scores count; it is never a silent miss.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from dreamray.data.world.scene import PALETTE, POSITIONS, SHAPES

MIN_SATURATION = 0.3  # the background has none; palette colours have >= 0.7
EDGE_SATURATION = 0.08  # antialiased edge pixels, counted by coverage for the shape
MIN_VALUE = 0.2  # very dark pixels have an unreliable hue
MIN_AREA_FRACTION = 0.004  # a component below this share of the image is noise (~16 px at 64)
# Shape cues (see `_shape`): a triangle's centroid lies 1/6 of its height below its box's
# centre, a circle's and a square's on it; a square fills its box, a circle pi/4 of it.
TRIANGLE_DROP = 1 / 12
SQUARE_ABOVE = (1 + math.pi / 4) / 2

REASON_UNDECODABLE = "undecodable"
REASON_NO_FOREGROUND = "no_foreground"
REASON_TOO_SMALL = "foreground_too_small"
READ_ATTRIBUTES = ("color", "shape", "position")


def _hue_degrees(rgb: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


_PALETTE_HUES = {name: _hue_degrees(rgb) for name, rgb in PALETTE.items()}


@dataclass(frozen=True)
class ReadObject:
    """One object read from an image.

    Attributes:
        color: nearest palette colour by hue.
        shape: circle | square | triangle.
        position: nearest anchor of the centroid.
        area_fraction: the component's share of the image.
    """

    color: str
    shape: str
    position: str
    area_fraction: float


@dataclass(frozen=True)
class Reading:
    """What the reader made of one image.

    Attributes:
        objects: the objects, largest first (empty when unreadable).
        reason: why the image could not be read (None when it could).
    """

    objects: tuple[ReadObject, ...] = ()
    reason: str | None = None


def _to_rgb_array(image: Image.Image | bytes) -> np.ndarray:
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
        image.load()
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top, bottom = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = top - bottom
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [top == r, top == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    )
    return hue * 60.0, saturation, top


def _nearest_color(hues: np.ndarray) -> str:
    angles = np.deg2rad(hues)
    mean = math.degrees(math.atan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360

    def distance(name: str) -> float:
        gap = abs(mean - _PALETTE_HUES[name])
        return min(gap, 360 - gap)

    return min(_PALETTE_HUES, key=distance)


def _edges(profile: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (start, length) of a coverage profile: partial end pixels count partly."""
    (inside,) = np.nonzero(profile > 0)
    start = inside[0] + 1 - profile[inside[0]]
    return float(start), float(profile.sum())


def _shape(mask: np.ndarray, saturation: np.ndarray) -> str:
    """Shape from the component's coverage (its saturation relative to its body's).

    Antialiased edge pixels are partly background: weighting each pixel by its coverage gives
    sub-pixel area and extents. A triangle (apex up) has its centroid below its box's centre;
    a square fills its box, a circle pi/4 of it.
    """
    near = ndimage.binary_dilation(mask) & (saturation >= EDGE_SATURATION)
    coverage = np.where(near, np.clip(saturation / np.percentile(saturation[mask], 90), 0, 1), 0)
    top, height = _edges(coverage.max(axis=1))
    _, width = _edges(coverage.max(axis=0))
    rows = np.arange(coverage.shape[0]) + 0.5
    centroid_y = (coverage.sum(axis=1) * rows).sum() / coverage.sum()
    if (centroid_y - top - height / 2) / height > TRIANGLE_DROP:
        return "triangle"
    return "square" if coverage.sum() / (width * height) > SQUARE_ABOVE else "circle"


def _read_component(mask: np.ndarray, hue: np.ndarray, saturation: np.ndarray) -> ReadObject:
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    cx, cy = (xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height
    position = min(
        POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2
    )
    return ReadObject(
        _nearest_color(hue[mask]), _shape(mask, saturation), position, len(xs) / mask.size
    )


def read_image(image: Image.Image | bytes) -> Reading:
    """Read the objects of a shapes-world image (rendered or generated).

    Args:
        image: a PIL image or encoded bytes.

    Returns:
        The reading: objects largest first, or a reason (undecodable, no_foreground,
        foreground_too_small).
    """
    try:
        rgb = _to_rgb_array(image)
    except (UnidentifiedImageError, OSError, ValueError):
        return Reading(reason=REASON_UNDECODABLE)
    hue, saturation, value = _hsv(rgb)
    foreground = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
    if not foreground.any():
        return Reading(reason=REASON_NO_FOREGROUND)
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    areas = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))
    min_area = MIN_AREA_FRACTION * foreground.size
    kept = [k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= min_area]
    if not kept:
        return Reading(reason=REASON_TOO_SMALL)
    return Reading(tuple(_read_component(labels == k, hue, saturation) for k in kept))


@dataclass
class AttributeScores:
    """Accuracy of generated images against their prompts' truth.

    Attributes:
        n: images scored (readable or not).
        correct: attribute -> images whose largest object has the prompted value.
        unreadable: reason -> images the reader could not read (scored as wrong, and counted).
        chance: attribute -> accuracy of a uniform guess over the world's values.
    """

    n: int = 0
    correct: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)
    chance: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float | int | dict[str, int]]:
        """The stage.json metrics: `<attr>_accuracy`, `<attr>_chance`, `n`, `unreadable`."""
        out: dict[str, float | int | dict[str, int]] = {"n": self.n}
        for attr in READ_ATTRIBUTES:
            out[f"{attr}_accuracy"] = self.correct[attr] / self.n if self.n else 0.0
            out[f"{attr}_chance"] = self.chance[attr]
        out["unreadable"] = dict(sorted(self.unreadable.items()))
        return out


def score_attributes(
    readings: Sequence[Reading],
    truths: Sequence[dict[str, str]],
    world_values: dict[str, Sequence[str]] | None = None,
) -> AttributeScores:
    """Score one generated image per prompt against the prompt's single-object truth.

    Args:
        readings: the reader's output, one per image.
        truths: per image, the prompted object (`color`, `shape`, `position`).
        world_values: attribute -> the values prompts draw from (for chance levels; None: the
            whole palette, shapes and positions).

    Returns:
        The scores.

    Raises:
        ValueError: when the lengths differ or a truth lacks an attribute (named by its index).
    """
    if len(readings) != len(truths):
        raise ValueError(f"{len(readings)} readings for {len(truths)} prompts")
    values = world_values or {"color": PALETTE, "shape": SHAPES, "position": POSITIONS}
    scores = AttributeScores(chance={a: 1.0 / len(values[a]) for a in READ_ATTRIBUTES})
    for index, (reading, truth) in enumerate(zip(readings, truths, strict=True)):
        missing = [a for a in READ_ATTRIBUTES if a not in truth]
        if missing:
            raise ValueError(f"prompt {index}: truth lacks {missing}")
        scores.n += 1
        if reading.reason is not None:
            scores.unreadable[reading.reason] += 1
            continue
        largest = reading.objects[0]
        for attr in READ_ATTRIBUTES:
            scores.correct[attr] += getattr(largest, attr) == truth[attr]
    return scores
