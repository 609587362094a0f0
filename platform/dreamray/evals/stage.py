"""The eval stage of a recipe: run a typed `EvalStageSpec` on a model artifact.

`run_eval_stage` is what the orchestration's eval executor calls with the resolved model
directory and the stage's output directory. Both tasks are resumable: VQA answers and generated
images are kept in results stores under `out_dir`, keyed by question id / `<item>/seed<seed>`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamray.config.specs import (
    AttributeMatchParams,
    CocoFidParams,
    EvalStageSpec,
    ScalingSpec,
    VqaParams,
)
from dreamray.evals.pool import PoolOptions
from dreamray.evals.results import RESULT_FILE, ResultsStore, write_json_atomic


def pool_options(scaling: ScalingSpec) -> PoolOptions:
    """Actor pool options from an eval stage's `scaling` (one actor per worker)."""
    return PoolOptions(
        num_actors=scaling.num_workers,
        num_cpus=scaling.cpus_per_worker,
        num_gpus=scaling.gpus_per_worker if scaling.use_gpu else 0.0,
    )


def run_eval_stage(spec: EvalStageSpec, model_dir: str, out_dir: str) -> dict[str, Any]:
    """Evaluate `model_dir` as the stage says; write `result.json` under `out_dir`.

    Args:
        spec: the validated eval stage.
        model_dir: the artifact directory (`eval.model` resolved by the runner).
        out_dir: the stage's output directory (results stores, manifest, result.json).

    Returns:
        The result (also written to `out_dir/result.json`).

    Raises:
        NotImplementedError: the model cannot generate yet (see the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool = pool_options(spec.scaling)
    if spec.eval.task == "vqa":
        result = run_vqa(spec.eval.params, model_dir, out, pool)
    elif spec.eval.task == "attribute_match":
        result = run_attribute_match(spec.eval.params, model_dir, out, pool)
    else:
        result = run_coco_fid(spec.eval.params, model_dir, out, pool)
    write_json_atomic(out / RESULT_FILE, result)
    return result


def run_vqa(params: VqaParams, model_dir: str, out: Path, pool: PoolOptions) -> dict[str, Any]:
    """Generate answers (resumable), then score a val split or write a test split's EvalAI file.

    Raises:
        NotImplementedError: DreamLLM has no text generation yet.
    """
    from dreamray.evals.vqa_data import load_questions
    from dreamray.evals.vqa_eval import (
        dreamllm_generator,
        evalai_results,
        generate_answers,
        require_text_generation,
        score_predictions,
    )
    from dreamray.evals.vqa_prompts import PRESETS

    require_text_generation()
    fmt = "omni" if params.omni_format else params.benchmark
    questions = load_questions(fmt, params.questions, params.annotations)
    factory = functools.partial(
        dreamllm_generator, model_dir, params.num_beams, params.max_new_tokens
    )
    preset = PRESETS[params.prompt_preset()]
    answers = generate_answers(
        questions,
        factory,
        preset,
        ResultsStore(out / "answers.jsonl"),
        params.images,
        batch_size=params.batch_size,
        pool=pool,
    )
    card = {
        "task": "vqa",
        "model": model_dir,
        **params.model_dump(),
        "preset_texts": asdict(preset),
    }
    if params.split == "test":
        write_json_atomic(out / "evalai_results.json", evalai_results(questions, answers, fmt))
        return {"card": card, "evalai_results": str(out / "evalai_results.json")}
    return {"card": card, **score_predictions(questions, answers, params.variant)}


def run_coco_fid(
    params: CocoFidParams, model_dir: str, out: Path, pool: PoolOptions
) -> dict[str, Any]:
    """Fix the caption manifest, generate every (caption, seed) image, re-rank, score.

    The same code as `evals/coco_fid.py generate-and-score` (`coco_run.generate_and_score`);
    re-running the stage on the same `out` resumes it.

    Raises:
        ManifestError: bad captions / too few images; RunMismatchError: `out` holds another run;
        ValueError: the model's resolution is not `params.resolution`; FidError: bad reference.
    """
    from dreamray.evals.coco_gen import SamplerSettings
    from dreamray.evals.coco_run import CocoFidRun, generate_and_score
    from dreamray.evals.fid_eval import FidSettings

    fid = FidSettings(
        protocol=params.protocol,
        extractor=params.feature_extractor,
        inception_weights=params.inception_weights,
        batch_size=params.feature_batch_size,
        device="cuda" if pool.num_gpus > 0 else "cpu",
        pool=pool,
        progress=False,  # a stage runs unattended: the dreamray_eval_* metrics show progress
    )
    run = CocoFidRun(
        model_dir=model_dir,
        captions=params.captions,
        num_samples=params.num_samples,
        seeds=tuple(params.seeds),
        fid=fid,
        sampler=SamplerSettings(
            params.num_inference_steps,
            params.guidance_scale,
            params.scheduler,
            params.generation_batch_size,
        ),
        gen_pool=pool,
        ref_stats=params.ref_stats,
        ref_images=params.ref_images,
        clip_model=params.clip_model if params.clip_rerank else None,
        manifest_seed=params.manifest_seed,
        resolution=params.resolution,
        chunk_size=2 * params.generation_batch_size,
    )
    return generate_and_score(run, out)


def run_attribute_match(
    params: AttributeMatchParams, model_dir: str, out: Path, pool: PoolOptions
) -> dict[str, Any]:
    """Generate an image per world prompt and seed (resumable), read and score its attributes.

    Raises:
        ValueError: a bad truth file, prompts without truth; ManifestError / RunMismatchError
        as for coco_fid.
    """
    from dreamray.evals.attribute_match import match_attributes
    from dreamray.evals.coco_gen import SamplerSettings
    from dreamray.evals.coco_run import CocoFidRun
    from dreamray.evals.fid_eval import FidSettings

    run = CocoFidRun(
        model_dir=model_dir,
        captions=params.captions,
        num_samples=params.num_samples,
        seeds=tuple(params.seeds),
        fid=FidSettings(protocol="clean", progress=False),  # generation only: no FID here
        sampler=SamplerSettings(
            params.num_inference_steps,
            params.guidance_scale,
            params.scheduler,
            params.generation_batch_size,
        ),
        gen_pool=pool,
        manifest_seed=params.manifest_seed,
        chunk_size=2 * params.generation_batch_size,
    )
    return match_attributes(run, params.truth, out)
