"""CLI: ``python -m dreamray.world_zoo --out DIR [--seed S] [--unet-steps N ...]``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields

from dreamray.asset_cli import asset_parser
from dreamray.world_zoo import REPORT_FILE, WorldZooSettings, build_world_zoo


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the world zoo and print its paths and report.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    parser = asset_parser("dreamray.world_zoo", "the pretrained tiny zoo of the shapes world")
    for f in fields(WorldZooSettings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    args = parser.parse_args(argv)
    settings = WorldZooSettings(**{f.name: getattr(args, f.name) for f in fields(WorldZooSettings)})
    paths = build_world_zoo(args.out, settings, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in vars(paths).items()}, indent=2))
    print((args.out / REPORT_FILE).read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
