"""Command line of the synthetic source writer."""

from __future__ import annotations

from dreamray.asset_cli import asset_parser
from dreamray.data.schema import SOURCES
from dreamray.data.synthetic import write_synthetic


def main(argv: list[str] | None = None) -> int:
    """Write synthetic sources.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    parser = asset_parser("dreamray.data.synthetic")
    parser.add_argument("--faults", action="store_true", help="plant bad rows and files")
    parser.add_argument("--source", nargs="+", choices=SOURCES, default=None)
    args = parser.parse_args(argv)
    sources = tuple(args.source) if args.source else None
    layouts = write_synthetic(args.out, args.seed, args.faults, sources)
    for source, layout in layouts.items():
        print(f"{source:<16} {layout.converter:<14} {len(layout.inputs)} input(s)")
    return 0
