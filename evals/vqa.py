"""VQA evaluation: score predictions, write EvalAI files, show prompts, generate answers.

    python evals/vqa.py score --format vqav2 --questions Q.json --annotations A.json \
        --predictions P.json [--variant official|official_2021|lmms|dreamllm|dreamllm_substring]
    python evals/vqa.py evalai --format vizwiz --questions test.json --predictions P.json \
        --out R.json
    python evals/vqa.py prompts --format okvqa --questions Q.json --preset okvqa --limit 3
    python evals/vqa.py generate --format textvqa --questions Q.json --images DIR --preset textvqa \
        --model ARTIFACT_DIR --results answers.jsonl

Predictions: a JSON list of {question_id|image, answer} or a JSONL results store. Defaults and
choices are the recipe's (`VqaParams`): a flag named after a spec field overrides it. Prints
JSON; exit code 2 on bad input (a missing model artifact included, reported before Ray starts).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

from dreamray.config.eval_specs import VqaParams
from dreamray.config.specs import ScalingSpec
from dreamray.evals.cli_params import (
    Flag,
    add_pool_options,
    add_spec_options,
    connect_if_pooled,
    pool_from_args,
    run_command,
)
from dreamray.evals.offline_weights import require_model_artifact
from dreamray.evals.pool import WorkerStartError
from dreamray.evals.results import ResultsStore
from dreamray.evals.vqa_data import (
    FORMATS,
    VqaQuestion,
    load_predictions,
    load_questions,
)
from dreamray.evals.vqa_eval import (
    dreamllm_generator,
    evalai_results,
    generate_answers,
    lookup_generator,
    score_predictions,
)
from dreamray.evals.vqa_prompts import PRESETS, PromptPreset, answerable_check_prompt, vqa_prompt
from dreamray.files import atomic_write_json

# Errors that are the input's fault (data or model): exit code 2 with the message.
BAD_INPUT = (ValueError, FileNotFoundError, WorkerStartError)
# The eval stage's pool size under a default `scaling`: one actor per worker.
NUM_ACTORS = ScalingSpec.model_fields["num_workers"].default
# The patch count of the paper's CLIP (ViT-L/14 at 224 px), for prompts made without a model.
PAPER_NUM_PATCHES = 256
PRESET = Flag("preset", required=True, help="prompts and post-processing")
MODEL_FLAG = "--model"
GENERATE = (Flag("batch_size"), Flag("num_beams"), Flag("max_new_tokens"))


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: `score`, `evalai`, `prompts`, `generate`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("score", "evalai", "prompts", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--format", required=True, choices=FORMATS)
        p.add_argument("--questions", required=True)
        p.add_argument("--out", help="also write the JSON output here")
    score = sub.choices["score"]
    score.add_argument("--annotations", help="VQA-API annotations (vqav2, okvqa)")
    score.add_argument("--predictions", required=True)
    add_spec_options(score, VqaParams, (Flag("variant"),))
    score.add_argument("--allow-missing", action="store_true")
    sub.choices["evalai"].add_argument("--predictions", required=True)
    for name in ("prompts", "generate"):
        add_spec_options(sub.choices[name], VqaParams, (PRESET,))
        sub.choices[name].add_argument(
            "--num-patches",
            type=int,
            help=f"CLIP patches per image (default: the model's; {PAPER_NUM_PATCHES})",
        )
    sub.choices["prompts"].add_argument("--limit", type=int, default=5)
    _add_generate_options(sub.choices["generate"])
    return parser


def _add_generate_options(gen: argparse.ArgumentParser) -> None:
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument(MODEL_FLAG, help="DreamLLM artifact directory")
    source.add_argument("--answers-table", help="JSON {question: answer}: a model-free dry run")
    gen.add_argument("--images", required=True, help="folder the image names are relative to")
    gen.add_argument("--results", required=True, help="JSONL results store (resumable)")
    add_pool_options(gen, num_actors=NUM_ACTORS)
    add_spec_options(gen, VqaParams, GENERATE)


def run(args: argparse.Namespace) -> object:
    """Execute one parsed command; returns what is printed (and written to `--out`)."""
    result = _command(args)
    if args.out:
        atomic_write_json(args.out, result)
    return result


def _command(args: argparse.Namespace) -> object:
    annotations = getattr(args, "annotations", None)
    questions = load_questions(args.format, args.questions, annotations)
    if args.command == "score":
        preds = load_predictions(args.predictions)
        return score_predictions(questions, preds, args.variant, args.allow_missing)
    if args.command == "evalai":
        return evalai_results(questions, load_predictions(args.predictions), args.format)
    preset = PRESETS[args.preset]
    if args.command == "prompts":
        args.num_patches = PAPER_NUM_PATCHES if args.num_patches is None else args.num_patches
        return [
            {
                "id": q.question_id,
                "prompt": vqa_prompt(q.question, preset, args.num_patches),
                "check": answerable_check_prompt(q.question, args.num_patches)
                if preset.answerable_check
                else None,
            }
            for q in questions[: args.limit]
        ]
    return _generate(args, questions, preset)


def _generate(
    args: argparse.Namespace, questions: list[VqaQuestion], preset: PromptPreset
) -> list[dict[str, str]]:
    """The `generate` command: answers on a pool, resumable through `--results`."""
    if args.model:
        require_model_artifact(args.model, MODEL_FLAG)  # before Ray or any actor starts
        factory = functools.partial(
            dreamllm_generator, args.model, args.num_beams, args.max_new_tokens
        )
    else:
        with open(args.answers_table) as f:
            factory = lookup_generator(json.load(f))
        args.num_patches = PAPER_NUM_PATCHES if args.num_patches is None else args.num_patches
    pool = pool_from_args(args)
    connect_if_pooled(pool, args.address)
    answers = generate_answers(
        questions,
        factory,
        preset,
        ResultsStore(args.results),
        args.images,
        num_patches=args.num_patches,
        batch_size=args.batch_size,
        pool=pool,
    )
    return [{"id": qid, "answer": a} for qid, a in answers.items()]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args), BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
