"""The tiny recipe's data: synthetic sources converted into unified shard directories.

`python -m dreamray.data.tiny --out .cache/tiny/data` writes
    <out>/sources/...                    synthetic sources in their original formats
    <out>/shards/<source>/manifest.json  one converted directory per source (see manifest.py)
and is idempotent: a source whose manifest exists is skipped, existing sources are reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dreamray.asset_cli import asset_parser
from dreamray.data.convert import ConvertRequest, ReadContext, ensure_ray, run_conversion
from dreamray.data.manifest import MANIFEST_NAME
from dreamray.data.synthetic import LAYOUT_FILE, SourceLayout, read_layouts, write_synthetic

SOURCES_DIR = "sources"
SHARDS_DIR = "shards"


def _layouts(sources_dir: Path, seed: int) -> dict:
    marker = sources_dir / LAYOUT_FILE
    if marker.is_file():
        written = json.loads(marker.read_text())
        if written["seed"] != seed or written["faults"]:
            raise ValueError(
                f"{sources_dir} holds sources of another seed / with faults: "
                "remove it or pick another --out"
            )
        return read_layouts(sources_dir)
    return write_synthetic(sources_dir, seed=seed, faults=False)


def build_tiny_data(
    out: str | Path, seed: int = 0, use_ray: bool = True, progress: bool = False
) -> dict[str, Path]:
    """Write the synthetic sources (once) and convert each into `<out>/shards/<source>/`.

    Args:
        out: the data root (e.g. `.cache/tiny/data`).
        seed: seed of the synthetic sources.
        use_ray: convert with Ray tasks (connects to / starts a local cluster first).
        progress: show progress bars.

    Returns:
        source -> its shard directory, for every name in `dreamray.data.schema.SOURCES`.

    Raises:
        ValueError: when `<out>/sources` was written with another seed.
    """
    out = Path(out)
    return convert_layouts(_layouts(out / SOURCES_DIR, seed), out / SHARDS_DIR, use_ray, progress)


def convert_layouts(
    layouts: dict[str, SourceLayout], shards: Path, use_ray: bool, progress: bool
) -> dict[str, Path]:
    """Convert each source into `<shards>/<source>/`, skipping those already converted.

    Args:
        layouts: source -> how to convert it.
        shards: the root of the converted directories.
        use_ray: convert with Ray tasks (connects to / starts a local cluster first).
        progress: show progress bars.

    Returns:
        source -> its shard directory.
    """
    dirs = {}
    for source, layout in layouts.items():
        dirs[source] = shards / source
        if (dirs[source] / MANIFEST_NAME).is_file():
            continue
        if use_ray:
            ensure_ray()
        ctx = ReadContext(source=source, images=layout.images)
        run_conversion(
            ConvertRequest(
                layout.converter,
                layout.inputs,
                dirs[source],
                ctx,
                use_ray=use_ray,
                progress=progress,
            )
        )
    return dirs


def main(argv: list[str] | None = None) -> int:
    """Command line: build the tiny data and print one line per source.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    args = asset_parser("dreamray.data.tiny", ray_options=True).parse_args(argv)
    if not args.no_ray:
        ensure_ray(args.num_cpus)
    print_conversions(build_tiny_data(args.out, args.seed, not args.no_ray, True))
    return 0


def print_conversions(dirs: dict[str, Path]) -> None:
    """Print one line per converted source: rows kept, rows rejected, where.

    Args:
        dirs: source -> its shard directory.
    """
    for source, path in dirs.items():
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        print(
            f"{source:<16} rows {manifest['rows_out']:>5}  rejected "
            f"{manifest['rows_rejected_total']:>3}  {path}"
        )


if __name__ == "__main__":
    sys.exit(main())
