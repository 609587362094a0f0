"""The shapes world: scenes of 1-3 flat shapes on a plain background, with their truth.

A scene is a list of objects, each a (colour, shape, position, size). Positions are five anchors
(left / right / top / bottom / centre) a quarter of the side apart; object radii are bounded so
that shapes on different anchors never touch, which keeps the attribute reader exact on the
world's own renders. The palette's hues are far apart and its colours saturated, against a grey
background without saturation: foreground is separable by saturation alone, for rendered and
generated images alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

# name -> RGB. Hues: red 0, orange 32, yellow 54, green 128, blue 223, purple 280 degrees.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (235, 135, 20),
    "yellow": (225, 205, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 215),
    "purple": (145, 55, 190),
}
BACKGROUND = (236, 236, 236)
SHAPES = ("circle", "square", "triangle")
# name -> anchor (x, y) as fractions of the side; neighbours are ANCHOR_GAP apart.
ANCHOR_GAP = 0.3
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.5 - ANCHOR_GAP, 0.5),
    "right": (0.5 + ANCHOR_GAP, 0.5),
    "top": (0.5, 0.5 - ANCHOR_GAP),
    "bottom": (0.5, 0.5 + ANCHOR_GAP),
    "centre": (0.5, 0.5),
}
# name -> radius as a fraction of the side (the shape fits in a circle of that radius).
SIZES: dict[str, float] = {"small": 0.09, "large": 0.13}
JITTER = 0.008  # anchor jitter, fraction of the side
# Two neighbouring shapes of the largest size, jittered towards each other, still do not touch.
assert 2 * max(SIZES.values()) + 2 * JITTER < ANCHOR_GAP
MIN_SIDE, MAX_SIDE = 32, 128
SUPERSAMPLE = 4  # drawn larger, then downsampled: antialiased edges like a real photo


class WorldError(ValueError):
    """Invalid world parameters (the message names the parameter and the allowed values)."""


@dataclass(frozen=True)
class WorldSpec:
    """The parameters of a shapes world, validated on construction.

    Attributes:
        image_size: side of the square images in pixels (32-128).
        colors: colour names, a subset of `PALETTE`.
        shapes: shape names, a subset of `SHAPES`.
        positions: position names, a subset of `POSITIONS`.
        sizes: size names, a subset of `SIZES`.
        max_objects: most objects per scene (1-3).
    """

    image_size: int = 64
    colors: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    positions: tuple[str, ...] = tuple(POSITIONS)
    sizes: tuple[str, ...] = tuple(SIZES)
    max_objects: int = 3

    def __post_init__(self) -> None:
        if not MIN_SIDE <= self.image_size <= MAX_SIDE:
            raise WorldError(f"image_size {self.image_size}: must be in [{MIN_SIDE}, {MAX_SIDE}]")
        for name, chosen, known in (
            ("colors", self.colors, PALETTE),
            ("shapes", self.shapes, SHAPES),
            ("positions", self.positions, POSITIONS),
            ("sizes", self.sizes, SIZES),
        ):
            unknown = [c for c in chosen if c not in known]
            if unknown or not chosen or len(set(chosen)) != len(chosen):
                raise WorldError(
                    f"{name} {list(chosen)}: need distinct names from {list(known)}"
                    + (f"; unknown: {unknown}" if unknown else "")
                )
        if not 1 <= self.max_objects <= min(3, len(self.positions)):
            raise WorldError(
                f"max_objects {self.max_objects}: must be in [1, {min(3, len(self.positions))}]"
                " (one object per position)"
            )


@dataclass(frozen=True)
class WorldObject:
    """One shape of a scene (its truth).

    Attributes:
        color: a `PALETTE` name.
        shape: a `SHAPES` name.
        position: a `POSITIONS` name.
        size: a `SIZES` name.
    """

    color: str
    shape: str
    position: str
    size: str

    def as_dict(self) -> dict[str, str]:
        """The object as a JSON-ready dict."""
        return {
            "color": self.color,
            "shape": self.shape,
            "position": self.position,
            "size": self.size,
        }


@dataclass(frozen=True)
class Scene:
    """A scene: its objects (distinct positions) and the jitter each was drawn with.

    Attributes:
        objects: the objects, in drawing order.
        offsets: per object, the (dx, dy) anchor jitter as fractions of the side.
    """

    objects: tuple[WorldObject, ...]
    offsets: tuple[tuple[float, float], ...] = field(default=())

    def truth(self) -> list[dict[str, str]]:
        """The objects as JSON-ready dicts (what a truth file records)."""
        return [o.as_dict() for o in self.objects]

    def placements(self) -> list[tuple[WorldObject, float, float, float]]:
        """Where each object is drawn: (object, centre x, centre y, radius), as fractions of
        the side (its anchor plus its jitter; the shape fits in the circle of that radius)."""
        offsets = self.offsets or ((0.0, 0.0),) * len(self.objects)
        out = []
        for obj, (dx, dy) in zip(self.objects, offsets, strict=True):
            ax, ay = POSITIONS[obj.position]
            out.append((obj, ax + dx, ay + dy, SIZES[obj.size]))
        return out


def sample_scene(rng: random.Random, spec: WorldSpec, num_objects: int | None = None) -> Scene:
    """Draw a scene: 1..max_objects objects on distinct positions.

    Args:
        rng: the random generator (the only source of randomness).
        spec: the world.
        num_objects: exact object count (None: uniform in 1..spec.max_objects).

    Returns:
        The scene.

    Raises:
        WorldError: when num_objects is outside 1..spec.max_objects.
    """
    count = rng.randint(1, spec.max_objects) if num_objects is None else num_objects
    if not 1 <= count <= spec.max_objects:
        raise WorldError(f"num_objects {count}: must be in [1, {spec.max_objects}]")
    positions = rng.sample(spec.positions, count)
    objects = tuple(
        WorldObject(rng.choice(spec.colors), rng.choice(spec.shapes), p, rng.choice(spec.sizes))
        for p in positions
    )
    offsets = tuple((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)) for _ in objects)
    return Scene(objects, offsets)


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The polygon of a square or triangle whose centroid is (cx, cy), inside radius r."""
    if shape == "square":
        h = r * 0.8  # half side: a square of this side has about the circle's area
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    # equilateral, apex up, inscribed in the circle of radius r around its centroid
    half_base = r * 3**0.5 / 2
    return [(cx, cy - r), (cx + half_base, cy + r / 2), (cx - half_base, cy + r / 2)]


def render_scene(scene: Scene, spec: WorldSpec) -> Image.Image:
    """Draw a scene as an RGB image of spec.image_size pixels.

    Args:
        scene: the scene.
        spec: the world (image size).

    Returns:
        The image.
    """
    side = spec.image_size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj, x, y, radius in scene.placements():
        cx, cy, r = x * side, y * side, radius * side
        fill = PALETTE[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_outline(obj.shape, cx, cy, r), fill=fill)
    return canvas.resize((spec.image_size, spec.image_size), Image.Resampling.LANCZOS)
