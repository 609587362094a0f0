"""The shapes world: a small synthetic world whose text describes its images.

`build_world(out, seed)` writes every training source in its original format under
`<out>/sources/` (with truth files, see `sources.py`) and converts each into
`<out>/shards/<source>/` through the ordinary converters. The world's eval sets are written by
`dreamray.evals.world_sets`. Command line: `python -m dreamray.data.world --out DIR`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dreamray.data.schema import SOURCES
from dreamray.data.synthetic import LAYOUT_FILE, read_layouts, write_layouts
from dreamray.data.tiny import SHARDS_DIR, SOURCES_DIR, convert_layouts
from dreamray.data.world.scene import (
    BACKGROUND,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    WorldError,
    WorldObject,
    WorldSpec,
    render_scene,
    sample_scene,
)
from dreamray.data.world.sources import WorldSizes, write_world_source

__all__ = [
    "BACKGROUND",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "WorldError",
    "WorldObject",
    "WorldSizes",
    "WorldSpec",
    "build_world",
    "render_scene",
    "sample_scene",
    "write_world_sources",
]


# Bumped when the same parameters write other content, so an older world is not reused.
WORLD_VERSION = 2


def _identity(spec: WorldSpec, sizes: WorldSizes, seed: int) -> dict:
    return {"seed": seed, "faults": False, "version": WORLD_VERSION, "world": asdict(spec),
            "sizes": asdict(sizes)}


def write_world_sources(out: str | Path, spec: WorldSpec, sizes: WorldSizes, seed: int = 0) -> dict:
    """Write every source of the world once (an existing directory of the same world is reused).

    Args:
        out: the sources root.
        spec: the world.
        sizes: samples per source.
        seed: seed.

    Returns:
        source -> layout.

    Raises:
        WorldError: when `out` holds sources written with other parameters.
    """
    out, identity = Path(out), json.loads(json.dumps(_identity(spec, sizes, seed)))
    marker = out / LAYOUT_FILE
    if marker.is_file():
        written = {k: v for k, v in json.loads(marker.read_text()).items() if k != "sources"}
        if written != identity:
            raise WorldError(
                f"{out} holds sources written with {written}, not {identity}: "
                "remove it (and the shards converted from it) or pick another --out"
            )
        return read_layouts(out)
    out.mkdir(parents=True, exist_ok=True)
    layouts = {s: write_world_source(out, s, spec, seed, sizes) for s in SOURCES}
    write_layouts(out, layouts, identity)
    return layouts


def build_world(
    out: str | Path,
    spec: WorldSpec | None = None,
    sizes: WorldSizes | None = None,
    seed: int = 0,
    use_ray: bool = True,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the world's sources (once) and convert each into `<out>/shards/<source>/`.

    Args:
        out: the world's data root (e.g. `.cache/tiny/world/data`).
        spec: the world (None: the default `WorldSpec()`).
        sizes: samples per source (None: the default `WorldSizes()`).
        seed: seed.
        use_ray: convert with Ray tasks.
        progress: show progress bars.

    Returns:
        source -> its shard directory.

    Raises:
        WorldError: when `<out>/sources` was written with other parameters.
    """
    out = Path(out)
    layouts = write_world_sources(
        out / SOURCES_DIR, spec or WorldSpec(), sizes or WorldSizes(), seed
    )
    return convert_layouts(layouts, out / SHARDS_DIR, use_ray, progress)
