"""Recipe specs: every YAML in the repo validates; bad recipes fail with every problem listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dreamray.config import RecipeError, RecipeSpec, load_recipe, parse_overrides

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "pipelines" / "recipes").glob("*.yaml"))
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_in_the_repo_validates(path):
    recipe = load_recipe(path, check_paths=False)
    assert recipe.topological_order()[-1] in recipe.stages
    for stage in recipe.stages.values():
        if stage.kind == "train":
            assert stage.total_steps >= 1
            assert Path(stage.model.llm_path).is_absolute()


def test_reference_recipe_values():
    recipe = load_recipe(REPO / "pipelines/recipes/dreamllm_7b.yaml", check_paths=False)
    stages = recipe.stages
    assert recipe.topological_order().index("merge") > 1
    assert stages["stage1_creation"].optim.lr == 2.0e-3
    assert (stages["stage2"].loss.lm, stages["stage2"].loss.vm) == (1.0, 10.0)
    assert stages["stage2"].init.plugins == "stage:merge"
    assert stages["stage1_creation"].total_steps == 60_000_000 // 2048
    assert stages["sft"].checkpoint.keep_last == 2  # per-stage value wins over stage_defaults
    assert stages["stage2"].checkpoint.keep_last == 3
    # stage_defaults.data deep-merges into every train stage's own data
    assert {s.data.map_workers_per_rank for s in stages.values() if s.kind == "train"} == {2}


def test_overrides_are_applied_before_validation():
    recipe = load_recipe(TINY, {"stages.sft.optim.lr": 3.0e-4}, check_paths=False)
    assert recipe.stages["sft"].optim.lr == 3.0e-4
    assert parse_overrides(["a.b=2.0e-3", "c=true", "d=[x, y]"]) == {
        "a.b": 2.0e-3,
        "c": True,
        "d": ["x", "y"],
    }
    with pytest.raises(RecipeError, match="expected key.path=value"):
        parse_overrides(["novalue"])


def test_all_problems_are_reported_together_with_key_paths():
    overrides = {
        "stages.sft.optim.lrr": 1.0,
        "stages.sft.needs": ["nope"],
        "stages.stage2.trainable": ["llm", "bogus"],
        "stages.stage1_creation.optim.lr": "abc",
        "stages.merge.merge.dream_embedding": "stage:ghost",
    }
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, overrides, check_paths=False)
    text = str(info.value)
    assert "stages.sft.optim.lrr: Extra inputs are not permitted" in text
    assert "stages.sft.needs: unknown stage 'nope'" in text
    assert "unknown groups ['bogus']" in text
    assert "stages.stage1_creation.optim.lr" in text
    assert len(info.value.problems) >= 4


def test_cycle_is_reported(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["stages"]["stage1_creation"]["needs"] = ["sft"]
    path = tmp_path / "cyclic.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(path, check_paths=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stages.sft.deepspeed.micro_batch_per_gpu": 3}, "not a multiple of micro_batch_per_gpu"),
        ({"stages.sft.data.sources.0.weight": 0.0}, "greater than 0"),
        ({"stages.sft.data.num_samples": 2}, "smaller than one global batch"),
        ({"stages.sft.loss.lm": 0.0, "stages.sft.loss.vm": 0.0}, "at least one of lm and vm"),
        ({"stages.stage2.init.plugins": "stage:sft"}, "does not list it in needs"),
        ({"stages.sft.data.map_workers_per_rank": 0},
         r"stages\.sft\.data\.map_workers_per_rank: .*greater than or equal to 1"),
    ],
)
def test_cross_field_checks(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, overrides, check_paths=False)


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, {"root": str(tmp_path)})
    assert f"stages.stage1_creation.model.llm_path: path does not exist: {tmp_path}" in str(
        info.value
    )


def test_specs_are_frozen_and_picklable():
    import pickle

    recipe = load_recipe(TINY, check_paths=False)
    stage = recipe.stages["stage2"]
    with pytest.raises(ValueError):
        stage.seed = 3
    assert pickle.loads(pickle.dumps(stage)) == stage
    assert RecipeSpec.model_validate(recipe.model_dump()) == recipe
    assert stage.grad_accumulation_steps == 2


def test_unreadable_recipe_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(bad)
