"""`python -m dreamray.data.world --out DIR`: write and convert the shapes world."""

from __future__ import annotations

import sys

from dreamray.asset_cli import asset_parser
from dreamray.data.convert import ensure_ray
from dreamray.data.tiny import print_conversions
from dreamray.data.world import WorldSizes, WorldSpec, build_world


def main(argv: list[str] | None = None) -> int:
    """Command line: build the world's data and print one line per source.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    defaults = WorldSizes()
    parser = asset_parser("dreamray.data.world", ray_options=True)
    parser.add_argument("--image-size", type=int, default=WorldSpec().image_size)
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name}", type=int, default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    sizes = WorldSizes(**{name: getattr(args, name) for name in vars(defaults)})
    if not args.no_ray:
        ensure_ray(args.num_cpus)
    dirs = build_world(
        args.out, WorldSpec(image_size=args.image_size), sizes, args.seed, not args.no_ray, True
    )
    print_conversions(dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
