"""Typed eval stage specs: discriminated on `task`, frozen, extra keys rejected, paths resolved."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from dreamray.config import CocoFidSpec, EvalStageSpec, RecipeError, VqaSpec, load_recipe
from dreamray.config import eval_specs as specs

COCO = {
    "task": "coco_fid",
    "model": "stage:sft",
    "params": {
        "captions": "coco/captions_val2014.json",
        "ref_stats": "fid/coco256.npz",
        "clip_model": "models/clip-vit-large-patch14",
    },
}
VQA = {
    "task": "vqa",
    "model": "stage:sft",
    "params": {"benchmark": "vizwiz", "questions": "vizwiz/val.json", "images": "vizwiz/val"},
}


def test_task_picks_the_typed_params_with_schema_defaults():
    coco = EvalStageSpec.model_validate({"kind": "eval", "needs": ["sft"], "eval": COCO}).eval
    assert isinstance(coco, CocoFidSpec)
    assert coco.params.protocol == "dreamllm" and coco.params.num_inference_steps == 150
    assert coco.params.guidance_scale == 2.0 and coco.params.seeds == list(range(42, 50))
    vqa = EvalStageSpec.model_validate({"kind": "eval", "eval": VQA}).eval
    assert isinstance(vqa, VqaSpec) and vqa.params.num_beams == 5
    assert vqa.params.prompt_preset() == "vizwiz_val" and vqa.params.variant == "official"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {**COCO["params"], "ref_images": "x"}}, "exactly one of ref_stats"),
        ({"params": {**COCO["params"], "clip_model": None}}, "needs clip_model"),
        ({"params": {**COCO["params"], "typo": 1}}, "Extra inputs"),
        ({"params": {**COCO["params"], "feature_extractor": "vgg"}}, "String should match"),
        ({"task": "gqa"}, "does not match any of the expected tags"),
    ],
)
def test_bad_coco_fid_specs(change, message):
    with pytest.raises(ValidationError, match=message):
        EvalStageSpec.model_validate({"kind": "eval", "eval": {**COCO, **change}})


def test_vqa_test_split_has_no_annotations_and_specs_are_frozen():
    bad = {**VQA, "params": {**VQA["params"], "split": "test", "annotations": "a.json"}}
    with pytest.raises(ValidationError, match="test split has no annotations"):
        EvalStageSpec.model_validate({"kind": "eval", "eval": bad})
    spec = EvalStageSpec.model_validate({"kind": "eval", "eval": VQA})
    with pytest.raises(ValidationError):
        spec.eval.params.num_beams = 1


def test_spec_choices_match_the_implementations():
    from dreamray.evals.features import PROTOCOLS, get_protocol
    from dreamray.evals.vqa_data import FORMATS
    from dreamray.evals.vqa_prompts import PRESETS
    from dreamray.metrics.vqa import VARIANTS

    assert specs.FID_PROTOCOLS == PROTOCOLS and specs.VQA_VARIANTS == VARIANTS
    assert [get_protocol(name).name for name in specs.FID_PROTOCOLS] == list(PROTOCOLS)
    # The tuples are the fields' Literal choices: one list, validated by the specs.
    assert specs.CocoFidParams.model_fields["protocol"].annotation is specs.FidProtocol
    assert specs.VqaParams.model_fields["variant"].annotation is specs.VqaVariant
    with pytest.raises(ValidationError, match="legacy_tensorflow"):
        specs.CocoFidParams(captions="c", ref_stats="r", protocol="legacy_tensorflow")
    with pytest.raises(ValidationError):
        specs.VqaParams(benchmark="vqav2", questions="q", images="i", variant="nope")
    assert set(specs.VQA_PRESETS) == set(PRESETS) and set(specs.VQA_BENCHMARKS) <= set(FORMATS)


def test_recipe_resolves_and_checks_eval_paths(tmp_path):
    for rel in ("coco/captions_val2014.json", "fid/coco256.npz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    (tmp_path / "model").mkdir()
    recipe = {
        "name": "evals",
        "root": str(tmp_path),
        "stages": {"fid": {"kind": "eval", "eval": {**COCO, "model": "model"}}},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        RecipeError, match=r"stages\.fid\.eval\.params\.clip_model: path does not exist"
    ):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "models/clip-vit-large-patch14").mkdir(parents=True)
    loaded = load_recipe(tmp_path / "r.yaml").stages["fid"].eval
    assert loaded.params.captions == str(tmp_path / "coco/captions_val2014.json")
    assert loaded.model == str(tmp_path / "model")


def _base_recipe(tmp_path, stage_defaults, fid_stage):
    for rel in ("coco/captions_val2014.json", "fid/coco256.npz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    for rel in ("zoo/llm", "zoo/clip", "zoo/sd", "models/clip-vit-large-patch14"):
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
    recipe = {"name": "evals", "root": str(tmp_path), "stage_defaults": stage_defaults,
              "stages": {"fid": fid_stage}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "r.yaml"


def test_eval_of_the_base_model_takes_the_defaults_model_and_seed(tmp_path):
    model = {"llm_path": "zoo/llm", "vision_path": "zoo/clip", "diffusion_path": "zoo/sd",
             "num_dream_queries": 4}
    fid = {"kind": "eval", "eval": {**COCO, "model": "base"}}
    stage = load_recipe(_base_recipe(tmp_path, {"model": model, "seed": 7, "optim": {}},
                                     fid)).stages["fid"]
    assert stage.seed == 7 and stage.base_model.num_dream_queries == 4
    assert stage.base_model.llm_path == str(tmp_path / "zoo/llm")
    assert stage.eval.model == "base" and stage.input_stages() == []
    own = {**fid, "seed": 3, "base_model": {**model, "num_dream_queries": 2}}
    stage = load_recipe(_base_recipe(tmp_path, {"model": model, "seed": 7}, own)).stages["fid"]
    assert stage.seed == 3 and stage.base_model.num_dream_queries == 2
    with pytest.raises(RecipeError, match="eval.model is `base` but there is no base_model"):
        load_recipe(_base_recipe(tmp_path, {"seed": 7}, fid))
    with pytest.raises(RecipeError, match=r"base_model\.llm_path: path does not exist"):
        load_recipe(_base_recipe(tmp_path, {"model": {**model, "llm_path": "nowhere"}}, fid))
