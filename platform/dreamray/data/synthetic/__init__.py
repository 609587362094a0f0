"""Small deterministic datasets in the original formats, with optional planted faults.

`write_synthetic(out, seed, faults)` writes every source under `out/<source>/` exactly the way
the real release lays it out, plus `out/_truth/<source>.json`: the rows a correct converter must
produce (texts and image sha256) and the planted bad rows with their expected reject reasons.
Command line: `python -m dreamray.data.synthetic --out DIR --seed S [--faults]`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dreamray.data.synthetic.chat import write_llava
from dreamray.data.synthetic.common import TRUTH_DIR, SourceLayout, Truth, read_truth
from dreamray.data.synthetic.docs import write_instruct_mmc4, write_mmc4
from dreamray.data.synthetic.pairs import IMG2DATASET_SOURCES, write_img2dataset, write_journeydb

LAYOUT_FILE = "layouts.json"

__all__ = [
    "LAYOUT_FILE",
    "TRUTH_DIR",
    "SourceLayout",
    "read_layouts",
    "read_truth",
    "write_source",
    "write_layouts",
    "write_synthetic",
]


def write_source(out: Path, source: str, seed: int, faults: bool) -> tuple[SourceLayout, Truth]:
    """Write one synthetic source and its truth file.

    Args:
        out: the synthetic root.
        source: a name from `dreamray.data.schema.SOURCES`.
        seed: seed (same seed, same bytes).
        faults: plant bad rows (and, for img2dataset sources, bad files).

    Returns:
        The source's layout and truth.

    Raises:
        ValueError: for an unknown source.
    """
    if source in IMG2DATASET_SOURCES:
        layout, truth = write_img2dataset(out, source, seed, faults)
    elif source == "mmc4_core":
        layout, truth = write_mmc4(out, seed, faults)
    elif source == "journeydb":
        layout, truth = write_journeydb(out, seed, faults)
    elif source in ("llava_pretrain", "llava_instruct"):
        layout, truth = write_llava(out, source, seed, faults)
    elif source == "instruct_mmc4":
        layout, truth = write_instruct_mmc4(out, seed, faults)
    else:
        raise ValueError(f"no synthetic writer for source {source!r}")
    truth.write(out)
    return layout, truth


def write_synthetic(
    out: str | Path, seed: int = 0, faults: bool = False, sources: tuple[str, ...] | None = None
) -> dict[str, SourceLayout]:
    """Write synthetic sources and `out/layouts.json` (how to convert each).

    Args:
        out: the synthetic root (created).
        seed: seed.
        faults: plant bad rows and files.
        sources: the sources to write (None: all of `dreamray.data.schema.SOURCES`).

    Returns:
        source -> layout.
    """
    from dreamray.data.schema import SOURCES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layouts = {s: write_source(out, s, seed, faults)[0] for s in (sources or SOURCES)}
    write_layouts(out, layouts, {"seed": seed, "faults": faults})
    return layouts


def write_layouts(out: Path, layouts: dict[str, SourceLayout], identity: dict) -> None:
    """Write `out/layouts.json`: how to convert each source, and what wrote them.

    Args:
        out: the sources root.
        layouts: source -> layout.
        identity: JSON-ready keys saying what wrote the sources (seed, faults, world, ...);
            a later writer compares them before reusing the directory.
    """
    body = {
        s: {
            **asdict(lay),
            "inputs": [str(p) for p in lay.inputs],
            "images": None if lay.images is None else str(lay.images),
        }
        for s, lay in layouts.items()
    }
    (out / LAYOUT_FILE).write_text(json.dumps({**identity, "sources": body}, indent=1) + "\n")


def read_layouts(out: str | Path) -> dict[str, SourceLayout]:
    """Read `layouts.json` back.

    Args:
        out: the synthetic root.

    Returns:
        source -> layout.
    """
    body = json.loads((Path(out) / LAYOUT_FILE).read_text())["sources"]
    return {
        s: SourceLayout(
            s,
            v["converter"],
            [Path(p) for p in v["inputs"]],
            None if v["images"] is None else Path(v["images"]),
        )
        for s, v in body.items()
    }
