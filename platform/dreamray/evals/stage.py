"""The eval stage of a recipe: run a typed `EvalStageSpec` on a model artifact.

`run_eval_stage` is what the orchestration's eval executor calls with the resolved model
directory and the stage's output directory. Both tasks are resumable: VQA answers and generated
images are kept in results stores under `out_dir`, keyed by question id / `<item>/seed<seed>`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamray.config.eval_specs import AttributeMatchParams, CocoFidParams, VqaParams
from dreamray.config.specs import EvalStageSpec, ScalingSpec
from dreamray.evals.offline_weights import (
    RECIPE_SOURCES,
    require_coco_fid_weights,
    require_model_artifact,
)
from dreamray.evals.pool import PoolOptions
from dreamray.evals.results import RESULT_FILE, ResultsStore
from dreamray.files import atomic_write_json

if TYPE_CHECKING:
    from dreamray.evals.coco_gen import SamplerSettings
    from dreamray.evals.coco_run import CocoFidRun
    from dreamray.evals.fid_eval import FidSettings

# Work items per generation task, in generation batches (the stage's and the CLI's default).
GEN_BATCHES_PER_TASK = 2


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
        MissingWeightsError: weights the task needs are not on local disk (checked first).
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
    atomic_write_json(out / RESULT_FILE, result)
    return result


def run_vqa(params: VqaParams, model_dir: str, out: Path, pool: PoolOptions) -> dict[str, Any]:
    """Generate answers (resumable), then score a val split or write a test split's EvalAI file.

    Raises:
        VqaDataError: an unreadable question file; MissingWeightsError: `model_dir` is not a
        model artifact (both before any actor starts).
    """
    from dreamray.evals.vqa_data import load_questions
    from dreamray.evals.vqa_eval import (
        dreamllm_generator,
        evalai_results,
        generate_answers,
        score_predictions,
    )
    from dreamray.evals.vqa_prompts import PRESETS

    fmt = "omni" if params.omni_format else params.benchmark
    questions = load_questions(fmt, params.questions, params.annotations)
    require_model_artifact(model_dir, option=RECIPE_SOURCES.model)
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
        atomic_write_json(out / "evalai_results.json", evalai_results(questions, answers, fmt))
        return {"card": card, "evalai_results": str(out / "evalai_results.json")}
    return {"card": card, **score_predictions(questions, answers, params.variant)}


def run_coco_fid(
    params: CocoFidParams, model_dir: str, out: Path, pool: PoolOptions
) -> dict[str, Any]:
    """Fix the caption manifest, generate every (caption, seed) image, re-rank, score.

    The same code as `evals/coco_fid.py generate-and-score` (`coco_fid_run`, then
    `coco_run.generate_and_score`); re-running the stage on the same `out` resumes it.

    Raises:
        MissingWeightsError: the Inception file, the CLIP dir or the model is not on local disk
        (checked first); ManifestError: bad captions / too few images; RunMismatchError: `out`
        holds another run; ValueError: the model's resolution is not `params.resolution`;
        FidError: bad reference.
    """
    from dreamray.evals.coco_run import generate_and_score

    require_coco_fid_weights(params, model_dir, RECIPE_SOURCES)
    # A stage runs unattended: the dreamray_eval_* metrics show progress, not a bar.
    fid = fid_settings(params, pool, progress=False)
    return generate_and_score(coco_fid_run(params, model_dir, fid, params.resolution), out)


def fid_settings(
    fields: Any, pool: PoolOptions, *, progress: bool, chunk_size: int | None = None
) -> FidSettings:
    """The FID settings of a coco_fid spec (shared by the stage and the CLI).

    Args:
        fields: a `CocoFidParams`, or parsed CLI args with its field names (`protocol`,
            `feature_extractor`, `inception_weights`, `feature_batch_size`).
        pool: the actors (features on GPU when they hold one).
        progress: show progress bars.
        chunk_size: images per actor task; None: `FidSettings`' default.

    Returns:
        The settings.
    """
    from dreamray.evals.fid_eval import FidSettings

    settings = FidSettings(
        protocol=fields.protocol,
        extractor=fields.feature_extractor,
        inception_weights=fields.inception_weights,
        batch_size=fields.feature_batch_size,
        device="cuda" if pool.num_gpus > 0 else "cpu",
        pool=pool,
        progress=progress,
    )
    return settings if chunk_size is None else replace(settings, chunk_size=chunk_size)


def coco_fid_run(
    params: CocoFidParams,
    model_dir: str,
    fid: FidSettings,
    resolution: int | None,
    *,
    chunk_size: int | None = None,
    max_items: int | None = None,
) -> CocoFidRun:
    """The generate-and-score run of a coco_fid spec (shared by the stage and the CLI).

    Args:
        params: the spec.
        model_dir: the model artifact.
        fid: the FID settings (`fid_settings`); generation runs on the same pool.
        resolution: the image side the model must make; None: any.
        chunk_size: work items per generation task; None: `GEN_BATCHES_PER_TASK` batches.
        max_items: debug: stop after generating this many.

    Returns:
        The run.
    """
    from dreamray.evals.coco_run import CocoFidRun

    return CocoFidRun(
        model_dir=model_dir,
        captions=params.captions,
        num_samples=params.num_samples,
        seeds=tuple(params.seeds),
        fid=fid,
        sampler=_sampler(params),
        gen_pool=fid.pool,
        ref_stats=params.ref_stats,
        ref_images=params.ref_images,
        clip_model=params.clip_model if params.clip_rerank else None,
        manifest_seed=params.manifest_seed,
        resolution=resolution,
        chunk_size=chunk_size or GEN_BATCHES_PER_TASK * params.generation_batch_size,
        max_items=max_items,
    )


def run_attribute_match(
    params: AttributeMatchParams, model_dir: str, out: Path, pool: PoolOptions
) -> dict[str, Any]:
    """Generate an image per world prompt and seed (resumable), read and score its attributes.

    Raises:
        MissingWeightsError: `model_dir` is not a model artifact (checked first); ValueError: a
        bad truth file, prompts without truth; ManifestError / RunMismatchError as for coco_fid.
    """
    from dreamray.evals.attribute_match import match_attributes
    from dreamray.evals.coco_run import CocoFidRun
    from dreamray.evals.fid_eval import FidSettings

    require_model_artifact(model_dir, option=RECIPE_SOURCES.model)

    run = CocoFidRun(
        model_dir=model_dir,
        captions=params.captions,
        num_samples=params.num_samples,
        seeds=tuple(params.seeds),
        fid=FidSettings(protocol="clean", progress=False),  # generation only: no FID here
        sampler=_sampler(params),
        gen_pool=pool,
        manifest_seed=params.manifest_seed,
        chunk_size=GEN_BATCHES_PER_TASK * params.generation_batch_size,
    )
    return match_attributes(run, params.truth, out)


def _sampler(params: CocoFidParams | AttributeMatchParams) -> SamplerSettings:
    from dreamray.evals.coco_gen import SamplerSettings

    return SamplerSettings(
        params.num_inference_steps,
        params.guidance_scale,
        params.scheduler,
        params.generation_batch_size,
    )
