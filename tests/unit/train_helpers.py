"""Helpers of the in-process train tests: tiny-recipe stages on the tiny zoo, fixed batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from dreamray.config.load import load_recipe
from dreamray.config.specs import TrainStageSpec

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "pipelines" / "recipes" / "tiny.yaml"
TRAIN_STAGES = ("stage1_comprehension", "stage1_creation", "stage2", "sft")
# Which hand-built batch kind (tests/unit/model_fixtures.make_batch) fits a stage's data mode.
BATCH_KIND = {"comprehension": "no_dreams", "creation": "no_images", "joint": "mixed"}


def tiny_stage(zoo, name: str, steps: int | None = None, **updates) -> TrainStageSpec:
    """A train stage of the tiny recipe on the given zoo, one worker, `base` inits.

    Args:
        zoo: the `tiny_zoo` fixture.
        name: the stage name in tiny.yaml.
        steps: planned optimizer steps (sets data.num_samples); None keeps the recipe's.
        **updates: top-level fields to replace (e.g. deepspeed=..., init=...).
    """
    recipe = load_recipe(TINY_RECIPE, check_paths=False)
    stage = recipe.stages[name]
    model = stage.model.model_copy(
        update={"llm_path": str(zoo.llm), "vision_path": str(zoo.vision),
                "diffusion_path": str(zoo.diffusion)}
    )
    data = stage.data
    if steps is not None:
        data = data.model_copy(update={"num_samples": steps * stage.deepspeed.global_batch_size})
    fields = {**stage.model_dump(), "model": model.model_dump(), "data": data.model_dump(),
              "init": {"llm": "base", "plugins": "base"}, "needs": []}
    for key, value in updates.items():
        fields[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return TrainStageSpec.model_validate(fields)


def fixed_batches(zoo, stage: TrainStageSpec, kinds: tuple[str, ...] | None = None):
    """An endless cycle over a small fixed set of batches that fit the stage's data mode."""
    from model_fixtures import built_model, make_batch

    model = built_model(zoo)
    kinds = kinds or (BATCH_KIND[stage.data.mode],)
    batches = [make_batch(model, k) for k in kinds]
    return itertools.cycle(batches)


def nan_batch(batch: dict) -> dict:
    """The batch with NaN CLIP pixels (its loss is NaN)."""
    out = dict(batch)
    out["clip_pixel_values"] = torch.full_like(batch["clip_pixel_values"], float("nan"))
    return out
