"""COCO FID on a Ray actor pool: generate-and-score (the paper's protocol), or score folders.

    python evals/coco_fid.py generate-and-score --model ARTIFACT --captions captions_val2014.json \
        --n 30000 --seeds 42..49 --steps 150 --guidance 2.0 --scheduler ddpm \
        --clip-rerank CLIP_VIT_L14 --ref-stats fid_stats_mscoco256_val.npz --out-dir runs/fid

    python evals/coco_fid.py score --images GEN --ref-stats coco_val256.npz --protocol dreamllm \
        --inception-weights pt_inception-2015-12-05-6726825d.pth --out fid.json
    python evals/coco_fid.py ref-stats --images COCO_VAL --protocol clean \
        --inception-weights inception-2015-12-05.pt --out coco_val_clean.npz

Defaults and choices are the recipe's (`CocoFidParams`): a flag named after a spec field
overrides it (`--num-inference-steps`, `--steps` for short). Weights are never downloaded:
a missing Inception file, CLIP dir or model is reported before anything starts.

Prints one JSON object (`fid`, `n`, `card`, ... or the reference provenance). Exit code 0 on
success, 2 on bad input (too few images, statistics of another dimension, missing or bad
weights).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from dreamray.config.eval_specs import CocoFidParams
from dreamray.evals.captions import ManifestError
from dreamray.evals.cli_params import (
    BAD_INPUT_EXIT,
    Flag,
    add_pool_options,
    add_spec_options,
    connect_if_pooled,
    pool_from_args,
    run_command,
    spec_values,
)
from dreamray.evals.coco_run import RunMismatchError, generate_and_score
from dreamray.evals.features import FeatureSetupError
from dreamray.evals.fid_eval import FidSettings, score_folders, write_reference_stats
from dreamray.evals.offline_weights import (
    WeightSources,
    require_coco_fid_weights,
    require_inception_weights,
)
from dreamray.evals.pool import PoolOptions, WorkerStartError
from dreamray.evals.stage import GEN_BATCHES_PER_TASK, coco_fid_run, fid_settings
from dreamray.files import atomic_write_json
from dreamray.metrics.fid import FidError


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


# Errors that are the input's fault: exit code 2 with the message, no traceback.
BAD_INPUT = (
    FidError,
    FeatureSetupError,
    FileNotFoundError,  # MissingWeightsError too
    WorkerStartError,
    ManifestError,
    RunMismatchError,
    ValidationError,
)
REFERENCE = (Flag("ref_stats"), Flag("ref_images"))
FEATURES = (Flag("feature_extractor", help="inception | tiny:SEED"), Flag("inception_weights"))
# Scoring folders has no paper protocol to default to: the reference fixes it.
SCORE_FEATURES = (
    Flag("protocol", required=True),
    *FEATURES,
    Flag("feature_batch_size", ("--batch-size",), help="images per feature batch"),
)
GENERATE = (
    Flag("captions"),
    Flag("num_samples", ("--n",), help="captions (images) per seed"),
    Flag("seeds", type=parse_seeds, help="42..49 or 1,5,7"),
    Flag("manifest_seed", help="seed of the caption sample"),
    Flag("num_inference_steps", ("--steps",)),
    Flag("guidance_scale", ("--guidance",)),
    Flag("scheduler"),
    Flag("clip_model", ("--clip-rerank",), help="HF CLIPModel dir: best of the seeds per caption"),
    Flag("generation_batch_size", ("--batch-size",), help="prompts per batch"),
    Flag("protocol"),
    *FEATURES,
    Flag("feature_batch_size", help="images per feature batch"),
)
CLI_SOURCES = WeightSources(Flag("inception_weights").option, Flag("clip_model").option, "--model")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (sub-commands `score`, `ref-stats`, `generate-and-score`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="FID of --images against a reference")
    score.add_argument("--images", required=True, help="folder of images to score")
    add_spec_options(score.add_mutually_exclusive_group(required=True), CocoFidParams, REFERENCE)
    score.add_argument("--save-stats", help="also write the scored folder's mu/sigma .npz here")
    add_spec_options(score, CocoFidParams, SCORE_FEATURES)
    _common(score)
    add_generate_parser(sub)
    stats = sub.add_parser("ref-stats", help="reference statistics of a folder, cached by content")
    stats.add_argument("--images", required=True, help="reference image folder")
    add_spec_options(stats, CocoFidParams, SCORE_FEATURES)
    _common(stats)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="write the JSON (score) or the .npz (ref-stats) here")
    p.add_argument("--cache-dir", help="content-hash cache of reference statistics")
    add_pool_options(p, num_actors=PoolOptions.num_actors)
    p.add_argument(
        "--chunk-size", type=int, default=FidSettings.chunk_size, help="images per actor task"
    )
    p.add_argument("--no-progress", action="store_true")


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """The `generate-and-score` sub-command (defaults: the recipe's, the paper's protocol)."""
    p = sub.add_parser("generate-and-score", help="generate, re-rank and score (resumable)")
    p.add_argument("--model", required=True, help="DreamLLM artifact dir")
    add_spec_options(p.add_mutually_exclusive_group(required=True), CocoFidParams, REFERENCE)
    add_spec_options(p, CocoFidParams, GENERATE)
    p.add_argument("--out-dir", required=True, help="run folder (reuse it to resume)")
    p.add_argument(
        "--gen-chunk-size",
        type=int,
        help=f"work items per actor task (default: {GEN_BATCHES_PER_TASK} batches)",
    )
    p.add_argument("--max-items", type=int, help="debug: stop after generating this many")
    _common(p)


def params_from_args(args: argparse.Namespace) -> CocoFidParams:
    """The spec of a generate-and-score run: the recipe's defaults, overridden by the flags.

    Raises:
        ValidationError: values the spec rejects.
    """
    values = spec_values(args, (*REFERENCE, *GENERATE))
    return CocoFidParams(**values, clip_rerank=args.clip_model is not None)


def settings_from_args(args: argparse.Namespace) -> FidSettings:
    """FidSettings from parsed arguments."""
    pool = pool_from_args(args)
    return fid_settings(args, pool, progress=not args.no_progress, chunk_size=args.chunk_size)


def execute(args: argparse.Namespace) -> dict:
    """Execute one parsed command; returns what is printed.

    Weights are checked first: a missing file is reported before Ray or any actor starts.

    Raises:
        MissingWeightsError: the Inception file, CLIP dir or model is not on local disk.
        ValidationError: generate-and-score values the spec rejects.
    """
    settings = settings_from_args(args)
    if args.command == "generate-and-score":
        return _generate_and_score(args, settings)
    require_inception_weights(
        args.protocol,
        args.inception_weights,
        extractor=args.feature_extractor,
        option=CLI_SOURCES.inception_weights,
    )
    connect_if_pooled(settings.pool, args.address)
    if args.command == "score":
        refs = (args.ref_images, args.ref_stats, args.cache_dir, args.save_stats)
        result = score_folders(args.images, settings, *refs)
        if args.out:
            atomic_write_json(args.out, result)
        return result
    return write_reference_stats(args.images, settings, args.out, args.cache_dir)


def _generate_and_score(args: argparse.Namespace, settings: FidSettings) -> dict:
    params = params_from_args(args)
    require_coco_fid_weights(params, args.model, CLI_SOURCES)
    connect_if_pooled(settings.pool, args.address)
    # No resolution check: the CLI scores any artifact's images, the spec's 512 px is the paper's.
    run = coco_fid_run(
        params,
        args.model,
        settings,
        resolution=None,
        chunk_size=args.gen_chunk_size,
        max_items=args.max_items,
    )
    return generate_and_score(run, args.out_dir)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "ref-stats" and not args.out:
        print("error: ref-stats needs --out", file=sys.stderr)
        return BAD_INPUT_EXIT
    return run_command(lambda: execute(args), BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
