"""The resolved recipe DAG as text: what `full_recipe.py --dry-run` prints.

Per stage: what it reads, trains and asks for, its identity, what the run directory's ledger
holds for it, the DeepSpeed dict its workers will get, and the trainable parameter counts and
memory plan (`dreamray.model.memory`). Imports neither Ray nor DeepSpeed.
"""

from __future__ import annotations

import json

from dreamray.config import RecipeSpec, TrainStageSpec
from dreamray.config.specs import BASE_SOURCE
from dreamray.data.pipeline import MAP_ACTOR_CPUS
from dreamray.orchestration.identity import stage_identities, stage_key


def describe_recipe(recipe: RecipeSpec, run_dir: str | None = None,
                    shapes_only: bool = False) -> str:
    """Render the recipe's stages in run order, with what each one reads, trains and asks for.

    Args:
        recipe: a validated recipe.
        run_dir: if given, also say what the run directory's ledger holds for each stage.
        shapes_only: passed to the model plan (config-only architectures, no weights read).

    Returns:
        A multi-line, human-readable description of the DAG.
    """
    ids = stage_identities(recipe)
    ledger = _ledger_states(run_dir, ids) if run_dir else {}
    lines = [f"recipe {recipe.name!r}: {len(recipe.stages)} stages, root {recipe.root}"]
    for level, names in enumerate(parallel_levels(recipe)):
        lines.append(f"level {level}: {' || '.join(names)}")
        for name in names:
            stage_lines = describe_stage(name, recipe)
            stage_lines.insert(1, f"  id: {stage_key(name, ids[name])}"
                               + (f"; run dir: {ledger[name]}" if name in ledger else ""))
            if isinstance(recipe.stages[name], TrainStageSpec):
                stage_lines += _train_extras(recipe.stages[name], shapes_only)
            lines += [f"  {line}" for line in stage_lines]
    return "\n".join(lines)


def _ledger_states(run_dir: str, ids: dict[str, str]) -> dict[str, str]:
    """What the ledger says per stage, without verifying checksums (a dry run stays fast)."""
    from dreamray.orchestration.ledger import Ledger
    from dreamray.orchestration.storage import RunStorage

    try:
        ledger = Ledger(RunStorage(run_dir))
        out = {}
        for name, identity in ids.items():
            record = ledger.read(name)
            if record is None:
                out[name] = "not run (would run)"
            elif record.identity != identity:
                out[name] = f"{record.status} for another spec (would run)"
            else:
                verb = {"done": "skip if its checksums verify", "running": "resume",
                        "failed": "resume"}[record.status]
                out[name] = f"{record.status} (would {verb})"
        return out
    except (OSError, ValueError, RuntimeError) as err:
        return dict.fromkeys(ids, f"ledger unreadable: {err}")


def _train_extras(stage: TrainStageSpec, shapes_only: bool) -> list[str]:
    # imported here: the memory plan needs torch, which the CLI's start-up does not
    from dreamray.model.memory import describe_stage_plan
    from dreamray.train.ds_config import deepspeed_config

    ds = deepspeed_config(stage.deepspeed, world_size=stage.scaling.num_workers,
                          grad_accumulation_steps=stage.grad_accumulation_steps)
    plan = describe_stage_plan(stage, shapes_only=shapes_only)
    return [f"  deepspeed dict: {json.dumps(ds, sort_keys=True)}", *(f"  {line}" for line in plan)]


def parallel_levels(recipe: RecipeSpec) -> list[list[str]]:
    """Group stages into levels: every stage of a level needs only stages of earlier levels."""
    depth: dict[str, int] = {}
    for name in recipe.topological_order():
        needs = recipe.stages[name].needs
        depth[name] = 1 + max((depth[d] for d in needs), default=-1)
    levels: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for name, level in depth.items():
        levels[level].append(name)
    return levels


def describe_stage(name: str, recipe: RecipeSpec) -> list[str]:
    """Lines describing one stage."""
    stage = recipe.stages[name]
    head = f"{name} [{stage.kind}]" + (f" needs {stage.needs}" if stage.needs else "")
    if isinstance(stage, TrainStageSpec):
        features = [f"  features: {stage.data.features}"] if stage.data.features else []
        return [head, *_describe_train(stage), *features]
    if stage.kind == "merge":
        return [head, *(f"  {k} <- {v}" for k, v in stage.merge.model_dump().items())]
    if stage.kind == "precompute":
        pre = stage.precompute
        sources = ", ".join(f"{src.name} ({src.path})" for src in pre.sources)
        return [head, f"  CLIP layer {pre.vision_select_layer} of {pre.vision_path}, VAE of "
                f"{pre.diffusion_path}, stored {pre.dtype}",
                f"  sources: {sources}",
                f"  resources: {_resources(stage.scaling, 'actors')}"]
    return [head, *_describe_eval(stage)]


def _resources(scaling, unit: str) -> str:
    gpus = scaling.gpus_per_worker if scaling.use_gpu else 0.0
    return (f"{scaling.num_workers} {unit} x "
            f"{{CPU: {scaling.cpus_per_worker:g}, GPU: {gpus:g}}}")


def _describe_eval(stage) -> list[str]:
    params = stage.eval.params
    if stage.eval.task == "coco_fid":
        reference = params.ref_stats or params.ref_images
        what = [f"  protocol {params.protocol}: {params.num_samples:,} captions x "
                f"{len(params.seeds)} seeds, {params.num_inference_steps} {params.scheduler} "
                f"steps, CFG {params.guidance_scale:g}, {params.resolution} px"
                + (", best seed by CLIP" if params.clip_rerank and len(params.seeds) > 1
                   else ""),
                f"  reference: {reference} ({params.feature_extractor})"]
    elif stage.eval.task == "attribute_match":
        what = [f"  {params.num_samples:,} world prompts x {len(params.seeds)} seeds, "
                f"{params.num_inference_steps} {params.scheduler} steps, "
                f"CFG {params.guidance_scale:g}; read against {params.truth}"]
    else:
        what = [f"  {params.benchmark} {params.split}, preset {params.prompt_preset()}, "
                f"{params.num_beams} beams, {params.max_new_tokens} new tokens; "
                f"scoring {params.variant}",
                f"  questions: {params.questions}"]
    subject = stage.eval.model
    if subject == BASE_SOURCE:  # the spec guarantees its base_model
        subject = (f"base (untrained plugins, seed {stage.seed}; "
                   f"LLM {stage.base_model.llm_path})")
    return [f"  {stage.eval.task} on {subject}", *what,
            f"  resources: {_resources(stage.scaling, 'actors')}"]


def _describe_train(stage: TrainStageSpec) -> list[str]:
    total = sum(s.weight for s in stage.data.sources)
    mix = ", ".join(f"{s.name} {s.weight / total:.1%}" for s in stage.data.sources)
    ds = stage.deepspeed
    scaling = stage.scaling
    return [
        f"  init: llm={stage.init.llm} plugins={stage.init.plugins}",
        f"  trainable: {', '.join(stage.trainable)}",
        f"  data ({stage.data.mode}, {stage.data.num_samples:,} samples): {mix}",
        f"  optim: lr={stage.optim.lr:g} warmup={stage.optim.warmup_ratio:g} "
        f"loss=({stage.loss.lm:g} lm, {stage.loss.vm:g} vm)",
        f"  batch: global {ds.global_batch_size} = micro {ds.micro_batch_per_gpu} x "
        f"accum {stage.grad_accumulation_steps} x workers {scaling.num_workers}; "
        f"{stage.total_steps:,} steps",
        f"  deepspeed: ZeRO-{ds.zero_stage} {ds.precision}",
        f"  resources: {_resources(scaling, 'workers')} + "
        f"{stage.map_actors} x {{CPU: {MAP_ACTOR_CPUS:g}}} for its data map actors "
        f"({stage.data.map_workers_per_rank} per worker)",
    ]
