"""A sample grid of a text-to-image run: one row per caption (its text as the row's title),
one column per image folder (each seed, then the re-ranked pick). PIL only, no matplotlib."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from dreamray.evals.captions import CaptionManifest
from dreamray.evals.coco_gen import save_png_atomic

TILE = 128
TITLE_HEIGHT = 28
LABEL_HEIGHT = 14
CHARS_PER_LINE_AT_TILE = 20  # PIL's default bitmap font is ~6 px wide


def _wrap(text: str, width: int, lines: int = 2) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            out.append(line)
            line = ""
        line = f"{line} {word}".strip()
    out.append(line)
    if len(out) > lines:  # keep the grid rows a fixed height: cut and mark the cut
        out = out[:lines]
        out[-1] = out[-1][: max(width - 3, 0)] + "..."
    return out


def write_grid(
    path: str | Path, manifest: CaptionManifest, folders: dict[str, Path], max_rows: int = 4
) -> Path:
    """Write the grid PNG (atomically).

    Args:
        path: destination PNG.
        manifest: the captions (the first `max_rows` items are shown).
        folders: column name -> folder holding `<item_id>.png`.
        max_rows: how many captions.

    Returns:
        The written path.
    """
    items = manifest.items[:max_rows]
    cols = list(folders)
    row_h = TITLE_HEIGHT + TILE
    grid = Image.new("RGB", (TILE * len(cols), LABEL_HEIGHT + row_h * len(items)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * TILE + 2, 1), name, fill="black")
    width = CHARS_PER_LINE_AT_TILE * len(cols)
    for r, item in enumerate(items):
        top = LABEL_HEIGHT + r * row_h
        draw.multiline_text((2, top + 1), "\n".join(_wrap(item.caption, width)), fill="black")
        for c, name in enumerate(cols):
            file = Path(folders[name]) / f"{item.item_id}.png"
            if file.is_file():
                with Image.open(file) as image:
                    tile = image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)
                grid.paste(tile, (c * TILE, top + TITLE_HEIGHT))
    save_png_atomic(grid, path)
    return Path(path)
