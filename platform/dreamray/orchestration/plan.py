"""The resolved recipe DAG as text: what `full_recipe.py --dry-run` prints."""

from __future__ import annotations

from dreamray.config import RecipeSpec, TrainStageSpec


def describe_recipe(recipe: RecipeSpec) -> str:
    """Render the recipe's stages in run order, with what each one reads, trains and asks for.

    Args:
        recipe: a validated recipe.

    Returns:
        A multi-line, human-readable description of the DAG.
    """
    lines = [f"recipe {recipe.name!r}: {len(recipe.stages)} stages, root {recipe.root}"]
    for level, names in enumerate(parallel_levels(recipe)):
        lines.append(f"level {level}: {' || '.join(names)}")
        for name in names:
            lines += [f"  {line}" for line in describe_stage(name, recipe)]
    return "\n".join(lines)


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
        return [head, *_describe_train(stage)]
    if stage.kind == "merge":
        return [head, *(f"  {k} <- {v}" for k, v in stage.merge.model_dump().items())]
    return [head, f"  {stage.eval.task} on {stage.eval.model}"]


def _describe_train(stage: TrainStageSpec) -> list[str]:
    total = sum(s.weight for s in stage.data.sources)
    mix = ", ".join(f"{s.name} {s.weight / total:.1%}" for s in stage.data.sources)
    ds = stage.deepspeed
    scaling = stage.scaling
    gpus = scaling.gpus_per_worker if scaling.use_gpu else 0.0
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
        f"  resources: {scaling.num_workers} workers x "
        f"{{CPU: {scaling.cpus_per_worker:g}, GPU: {gpus:g}}}",
    ]
