"""FID of image folders on a Ray actor pool (COCO FID's scoring half).

    python evals/coco_fid.py score --images GEN --ref-stats coco_val256.npz --protocol dreamllm \
        --inception-weights pt_inception-2015-12-05-6726825d.pth --out fid.json
    python evals/coco_fid.py ref-stats --images COCO_VAL --protocol clean \
        --inception-weights inception-2015-12-05.pt --out coco_val_clean.npz

Prints one JSON object (`fid`, `n`, `card`, ... or the reference provenance). Exit code 0 on
success, 2 on bad input (too few images, statistics of another dimension, bad weights).
"""

from __future__ import annotations

import argparse
import json
import sys

from dreamray.evals.features import PROTOCOLS, FeatureSetupError
from dreamray.evals.fid_eval import FidSettings, score_folders, write_reference_stats
from dreamray.evals.pool import PoolOptions, WorkerStartError, ensure_ray
from dreamray.evals.results import write_json_atomic
from dreamray.metrics.fid import FidError


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (sub-commands `score` and `ref-stats`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="FID of --images against a reference")
    score.add_argument("--images", required=True, help="folder of images to score")
    ref = score.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref-images", help="reference image folder")
    ref.add_argument("--ref-stats", help="reference .npz with mu and sigma")
    score.add_argument("--save-stats", help="also write the scored folder's mu/sigma .npz here")
    _common(score)
    stats = sub.add_parser("ref-stats", help="reference statistics of a folder, cached by content")
    stats.add_argument("--images", required=True, help="reference image folder")
    _common(stats)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--feature-extractor", default="inception", help="inception | tiny:SEED")
    p.add_argument("--inception-weights", help="local Inception file (default: clean-fid's)")
    p.add_argument("--out", help="write the JSON (score) or the .npz (ref-stats) here")
    p.add_argument("--cache-dir", help="content-hash cache of reference statistics")
    p.add_argument("--num-actors", type=int, default=2, help="0: in-process, no Ray")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=128, help="images per actor task")
    p.add_argument("--address", help="Ray cluster address (default: a new local cluster)")
    p.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace) -> FidSettings:
    """FidSettings from parsed arguments."""
    return FidSettings(
        protocol=args.protocol,
        extractor=args.feature_extractor,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device="cuda" if args.gpus_per_actor > 0 else "cpu",
        pool=PoolOptions(
            num_actors=args.num_actors, num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor
        ),
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if args.command == "ref-stats" and not args.out:
        print("error: ref-stats needs --out", file=sys.stderr)
        return 2
    if settings.pool.num_actors > 0:
        ensure_ray(args.address)
    try:
        if args.command == "score":
            result = score_folders(
                args.images,
                settings,
                args.ref_images,
                args.ref_stats,
                args.cache_dir,
                args.save_stats,
            )
            if args.out:
                write_json_atomic(args.out, result)
        else:
            result = write_reference_stats(args.images, settings, args.out, args.cache_dir)
    except (FidError, FeatureSetupError, FileNotFoundError, WorkerStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
