"""`python -m dreamray.data.convert <converter> --input ... --output OUT [options]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamray.data.convert.base import ReadContext
from dreamray.data.convert.registry import CONVERTERS
from dreamray.data.convert.runner import (
    BadInputError,
    ConvertRequest,
    convert_and_report,
    ensure_ray,
)
from dreamray.data.images import MAX_IMAGE_PIXELS

HELP = {
    "mmc4": "MMC4 docs (.jsonl + --images, or WebDataset/OpenFlamingo .tar)",
    "img2dataset": "img2dataset parquet shards or webdataset tars (dirs or files)",
    "journeydb": "JourneyDB train_anno_realease_repath.jsonl + --images",
    "llava": "LLaVA json + --images",
    "instruct_mmc4": "InstructMMC4 json + --images",
}


def _common(sub: argparse.ArgumentParser, name: str) -> None:
    converter = CONVERTERS[name]
    sub.add_argument("--input", nargs="+", type=Path, required=True)
    sub.add_argument("--output", type=Path, required=True)
    sub.add_argument("--images", type=Path, required=converter.needs_images)
    sub.add_argument("--source", choices=converter.sources, default=converter.sources[0])
    sub.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS)
    sub.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="skip unreadable input files and record them in the manifest",
    )
    sub.add_argument("--overwrite", action="store_true")
    sub.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray cluster started when none is connected",
    )
    sub.add_argument("--max-parallel", type=int, default=None, help="tasks in flight at most")
    sub.add_argument("--no-ray", action="store_true", help="convert in this process, one by one")
    sub.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per converter.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(prog="python -m dreamray.data.convert", description=__doc__)
    subs = parser.add_subparsers(dest="converter", required=True)
    for name in CONVERTERS:
        sub = subs.add_parser(name, help=HELP[name])
        _common(sub, name)
        if name in ("mmc4", "instruct_mmc4"):
            sub.add_argument(
                "--drop-bad-images",
                action="store_true",
                help="drop a bad image and keep its document",
            )
        if name == "img2dataset":
            sub.add_argument("--caption-column", default="txt")
            sub.add_argument("--image-column", default="jpg")
        if name == "journeydb":
            sub.add_argument(
                "--text-field",
                choices=("caption", "prompt"),
                default="caption",
                help="Task2 caption or Midjourney prompt",
            )
        if CONVERTERS[name].read_records is not None:
            sub.add_argument(
                "--split-rows",
                type=int,
                default=0,
                help="records per task for one big .json file (0: whole file)",
            )
    return parser


def request_from_args(args: argparse.Namespace) -> ConvertRequest:
    """Turn parsed arguments into a ConvertRequest (options a converter lacks stay unset).

    Args:
        args: parsed arguments.

    Returns:
        The request.
    """
    extra = {
        key: getattr(args, key)
        for key in ("drop_bad_images", "caption_column", "image_column", "text_field")
        if hasattr(args, key)
    }
    ctx = ReadContext(source=args.source, images=args.images, max_pixels=args.max_pixels, **extra)
    return ConvertRequest(
        converter=args.converter,
        inputs=args.input,
        output=args.output,
        ctx=ctx,
        skip_bad_files=args.skip_bad_files,
        overwrite=args.overwrite,
        split_rows=args.split_rows if hasattr(args, "split_rows") else 0,
        max_parallel=args.max_parallel,
        use_ray=not args.no_ray,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    """Run one conversion from the command line.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code: 0 on success, 1 when inputs cannot be read, 2 for a bad request.
    """
    args = build_parser().parse_args(argv)
    req = request_from_args(args)
    try:
        if req.use_ray:
            ensure_ray(args.num_cpus)
        convert_and_report(req)
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
