"""What every asset writer's command line shares (`python -m dreamray.data.tiny`,
`dreamray.data.world`, `dreamray.data.synthetic`, `dreamray.evals.tiny`,
`dreamray.evals.world_sets`, `dreamray.world_zoo`): `--out DIR`, `--seed N`, the Ray switches of
the writers that convert, and a two-column listing of what was written. Pure: standard library.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path


def asset_parser(prog: str, description: str | None = None,
                 ray_options: bool = False) -> argparse.ArgumentParser:
    """A parser with `--out DIR` (required) and `--seed N` (default 0).

    Args:
        prog: the module's `python -m` name.
        description: the help text.
        ray_options: also `--num-cpus N` (of a local Ray started for the conversions) and
            `--no-ray` (convert in process).

    Returns:
        The parser, for the writer to add its own options.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--seed", type=int, default=0, help="everything written follows it")
    if ray_options:
        parser.add_argument("--num-cpus", type=int, default=None,
                            help="CPUs of the local Ray started for the conversions")
        parser.add_argument("--no-ray", action="store_true", help="convert in this process")
    return parser


def print_listing(rows: Mapping[str, object], width: int = 16) -> None:
    """Print `name  value` lines, the names padded to `width`."""
    for name, value in rows.items():
        print(f"{name:<{width}} {value}")
