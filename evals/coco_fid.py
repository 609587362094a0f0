"""COCO FID on a Ray actor pool: generate-and-score (the paper's protocol), or score folders.

    python evals/coco_fid.py generate-and-score --model ARTIFACT --captions captions_val2014.json \
        --n 30000 --seeds 42..49 --steps 150 --guidance 2.0 --scheduler ddpm \
        --clip-rerank CLIP_VIT_L14 --ref-stats fid_stats_mscoco256_val.npz --out-dir runs/fid

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

from dreamray.evals.captions import ManifestError
from dreamray.evals.coco_gen import SamplerSettings
from dreamray.evals.coco_run import CocoFidRun, RunMismatchError, generate_and_score
from dreamray.evals.features import PROTOCOLS, FeatureSetupError
from dreamray.evals.fid_eval import FidSettings, score_folders, write_reference_stats
from dreamray.evals.pool import PoolOptions, WorkerStartError, ensure_ray
from dreamray.evals.results import write_json_atomic
from dreamray.metrics.fid import FidError

# Errors that are the input's fault: exit code 2 with the message, no traceback.
_BAD_INPUT = (
    FidError,
    FeatureSetupError,
    FileNotFoundError,
    WorkerStartError,
    ManifestError,
    RunMismatchError,
)


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
    add_generate_parser(sub)
    stats = sub.add_parser("ref-stats", help="reference statistics of a folder, cached by content")
    stats.add_argument("--images", required=True, help="reference image folder")
    _common(stats)
    return parser


def _common(
    p: argparse.ArgumentParser,
    default_protocol: str | None = None,
    feature_batch_flag: str = "--batch-size",
) -> None:
    p.add_argument(
        "--protocol", required=default_protocol is None, default=default_protocol, choices=PROTOCOLS
    )
    p.add_argument("--feature-extractor", default="inception", help="inception | tiny:SEED")
    p.add_argument("--inception-weights", help="local Inception file (default: clean-fid's)")
    p.add_argument("--out", help="write the JSON (score) or the .npz (ref-stats) here")
    p.add_argument("--cache-dir", help="content-hash cache of reference statistics")
    p.add_argument("--num-actors", type=int, default=2, help="0: in-process, no Ray")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    # generate-and-score's --batch-size is the generation batch: features get their own flag
    p.add_argument(feature_batch_flag, dest="batch_size", type=int, default=32, help="features")
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


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """The `generate-and-score` sub-command (defaults: the paper's protocol)."""
    p = sub.add_parser("generate-and-score", help="generate, re-rank and score (resumable)")
    p.add_argument("--model", required=True, help="DreamLLM artifact dir")
    p.add_argument("--captions", required=True, help="COCO captions json (captions_val2014.json)")
    p.add_argument("--n", type=int, default=30000, help="captions (images) per seed")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(42, 50)), help="42..49 or 1,2")
    p.add_argument("--manifest-seed", type=int, default=0, help="seed of the caption sample")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--scheduler", default="ddpm", choices=("ddpm", "ddim"))
    p.add_argument("--clip-rerank", help="HF CLIPModel dir: best of the seeds per caption")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref-stats", help="reference .npz with mu and sigma")
    ref.add_argument("--ref-images", help="reference image folder")
    p.add_argument("--out-dir", required=True, help="run folder (reuse it to resume)")
    p.add_argument(
        "--batch-size", dest="gen_batch_size", type=int, default=24, help="prompts per batch"
    )
    p.add_argument("--gen-chunk-size", type=int, default=48, help="work items per actor task")
    p.add_argument("--max-items", type=int, help="debug: stop after generating this many")
    _common(p, default_protocol="dreamllm", feature_batch_flag="--feature-batch-size")


def parse_seeds(text: str) -> list[int]:
    """`42..49` (inclusive) or `1,5,7` -> a list of distinct seeds.

    Raises:
        argparse.ArgumentTypeError: a malformed list, an empty range or a duplicate seed.
    """
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split(".."))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seeds {text!r}: use A..B or A,B,C") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds {text!r}: empty or with duplicates")
    return seeds


def run_from_args(args: argparse.Namespace) -> CocoFidRun:
    """The generate-and-score run described by parsed arguments."""
    settings = settings_from_args(args)
    return CocoFidRun(
        model_dir=args.model,
        captions=args.captions,
        num_samples=args.n,
        seeds=tuple(args.seeds),
        fid=settings,
        sampler=SamplerSettings(args.steps, args.guidance, args.scheduler, args.gen_batch_size),
        gen_pool=settings.pool,
        ref_stats=args.ref_stats,
        ref_images=args.ref_images,
        clip_model=args.clip_rerank,
        manifest_seed=args.manifest_seed,
        chunk_size=args.gen_chunk_size,
        max_items=args.max_items,
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
        if args.command == "generate-and-score":
            result = generate_and_score(run_from_args(args), args.out_dir)
        elif args.command == "score":
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
    except _BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
