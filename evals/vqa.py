"""VQA evaluation: score predictions, write EvalAI files, show prompts, generate answers.

    python evals/vqa.py score --format vqav2 --questions Q.json --annotations A.json \
        --predictions P.json [--variant official|official_2021|lmms|dreamllm|dreamllm_substring]
    python evals/vqa.py evalai --format vizwiz --questions test.json --predictions P.json \
        --out R.json
    python evals/vqa.py prompts --format okvqa --questions Q.json --preset okvqa --limit 3
    python evals/vqa.py generate --format textvqa --questions Q.json --images DIR --preset textvqa \
        --model ARTIFACT_DIR --results answers.jsonl

Predictions: a JSON list of {question_id|image, answer} or a JSONL results store. Prints JSON;
exit code 2 on bad input, 3 when generation is not available.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

from dreamray.evals.pool import PoolOptions, WorkerStartError, ensure_ray
from dreamray.evals.results import ResultsStore, write_json_atomic
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
    require_text_generation,
    score_predictions,
)
from dreamray.evals.vqa_prompts import PRESETS, PromptPreset, answerable_check_prompt, vqa_prompt
from dreamray.metrics.vqa import VARIANTS


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: `score`, `evalai`, `prompts`, `generate`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("score", "evalai", "prompts", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--format", required=True, choices=FORMATS)
        p.add_argument("--questions", required=True)
        p.add_argument("--out", help="also write the JSON output here")
    sub.choices["score"].add_argument("--annotations", help="VQA-API annotations (vqav2, okvqa)")
    sub.choices["score"].add_argument("--predictions", required=True)
    sub.choices["score"].add_argument("--variant", default="official", choices=VARIANTS)
    sub.choices["score"].add_argument("--allow-missing", action="store_true")
    sub.choices["evalai"].add_argument("--predictions", required=True)
    for name in ("prompts", "generate"):
        sub.choices[name].add_argument("--preset", required=True, choices=sorted(PRESETS))
        sub.choices[name].add_argument(
            "--num-patches", type=int, help="CLIP patches per image (default: the model's; 256)"
        )
    sub.choices["prompts"].add_argument("--limit", type=int, default=5)
    gen = sub.choices["generate"]
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="DreamLLM artifact directory")
    source.add_argument("--answers-table", help="JSON {question: answer}: a model-free dry run")
    gen.add_argument("--images", required=True, help="folder the image names are relative to")
    gen.add_argument("--results", required=True, help="JSONL results store (resumable)")
    gen.add_argument("--num-actors", type=int, default=1, help="0: in-process, no Ray")
    gen.add_argument("--gpus-per-actor", type=float, default=0.0)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--num-beams", type=int, default=5)
    gen.add_argument("--max-new-tokens", type=int, default=1024)
    gen.add_argument("--address", help="Ray cluster address (default: a new local cluster)")
    return parser


def run(args: argparse.Namespace) -> object:
    """Execute one parsed command; returns what is printed."""
    annotations = getattr(args, "annotations", None)
    questions = load_questions(args.format, args.questions, annotations)
    if args.command == "score":
        preds = load_predictions(args.predictions)
        return score_predictions(questions, preds, args.variant, args.allow_missing)
    if args.command == "evalai":
        return evalai_results(questions, load_predictions(args.predictions), args.format)
    preset = PRESETS[args.preset]
    if args.command == "prompts":
        args.num_patches = 256 if args.num_patches is None else args.num_patches
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
        require_text_generation()  # in the driver, before actors start
        factory = functools.partial(
            dreamllm_generator, args.model, args.num_beams, args.max_new_tokens
        )
    else:
        with open(args.answers_table) as f:
            factory = lookup_generator(json.load(f))
        args.num_patches = 256 if args.num_patches is None else args.num_patches
    pool = PoolOptions(num_actors=args.num_actors, num_gpus=args.gpus_per_actor)
    if pool.num_actors > 0:
        ensure_ray(args.address)
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
    try:
        result = run(args)
    except (ValueError, FileNotFoundError, WorkerStartError) as err:  # data or model errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NotImplementedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
