"""The attribute_match eval stage: generation through coco_fid's phase, readings scored against
the world's truth (a model that draws the truth scores 1, a colour-blind one 0 on colour)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dreamray.config import EvalStageSpec
from dreamray.data.world.scene import PALETTE, Scene, WorldObject, WorldSpec, render_scene
from dreamray.evals.pool import PoolOptions
from dreamray.evals.stage import run_attribute_match
from dreamray.evals.world_sets import read_world_truth, write_world_evals

sys.path.insert(0, str(Path(__file__).parent))
LOCAL = PoolOptions(num_actors=0)
NUM_PROMPTS = 6


@pytest.fixture(scope="module")
def world_set(tmp_path_factory):
    return write_world_evals(tmp_path_factory.mktemp("world"), WorldSpec(image_size=32), seed=3,
                             coco_images=8, vqa_images=1)


@pytest.fixture(scope="module")
def artifact(tiny_zoo, tmp_path_factory):
    from coco_fixtures import write_artifact

    return write_artifact(tiny_zoo, tmp_path_factory.mktemp("artifact"))


def _params(world_set, **extra):
    spec = EvalStageSpec.model_validate({"kind": "eval", "eval": {
        "task": "attribute_match", "model": "stage:sft",
        "params": {"captions": str(world_set.coco_captions), "truth": str(world_set.coco_truth),
                   "num_samples": NUM_PROMPTS, "num_inference_steps": 2,
                   "generation_batch_size": 3, **extra}}})
    return spec.eval.params


def _draw_truth(world_set, monkeypatch, recolor=None):
    """Replace image generation by a renderer of each caption's true object (maybe recoloured)."""
    from dreamray.evals.captions import build_coco_manifest
    from dreamray.model import generation

    truth = read_world_truth(world_set.coco_truth)
    manifest = build_coco_manifest(world_set.coco_captions, 8, 0)
    by_caption = {item.caption: truth.objects[item.image_id] for item in manifest.items}
    spec = WorldSpec(image_size=32)

    def fake_generate(model, captions, **kwargs):
        images = []
        for text in captions:
            obj = dict(by_caption[text])
            if recolor:
                obj["color"] = recolor(obj["color"])
            images.append(render_scene(Scene((WorldObject(**obj),), ((0.0, 0.0),)), spec))
        return images

    monkeypatch.setattr(generation, "generate_images", fake_generate)


def test_a_model_that_draws_the_truth_scores_one(artifact, world_set, tmp_path, monkeypatch):
    _draw_truth(world_set, monkeypatch)
    result = run_attribute_match(_params(world_set, seeds=[0, 1]), str(artifact), tmp_path, LOCAL)
    assert result["status"] == "complete" and result["n"] == 2 * NUM_PROMPTS
    for attr in ("color", "shape", "position"):
        assert result[f"{attr}_accuracy"] == 1.0
        assert result["per_seed"]["1"][f"{attr}_accuracy"] == 1.0
    assert result["color_chance"] == pytest.approx(1 / len(PALETTE))
    assert result["position_chance"] == pytest.approx(1 / 5)
    lines = (tmp_path / "readings.jsonl").read_text().splitlines()
    assert len(lines) == 2 * NUM_PROMPTS and all(json.loads(x)["match"]["color"] for x in lines)
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "scores.json").is_file()


def test_a_colour_blind_model_scores_zero_on_colour(artifact, world_set, tmp_path, monkeypatch):
    names = list(PALETTE)
    _draw_truth(world_set, monkeypatch, recolor=lambda c: names[(names.index(c) + 3) % 6])
    result = run_attribute_match(_params(world_set), str(artifact), tmp_path, LOCAL)
    assert result["color_accuracy"] == 0.0
    assert result["shape_accuracy"] == result["position_accuracy"] == 1.0


def test_the_tiny_model_is_scored_with_unreadable_images_counted(artifact, world_set, tmp_path):
    params = _params(world_set)
    result = run_attribute_match(params, str(artifact), tmp_path, LOCAL)
    assert result["n"] == NUM_PROMPTS and result["generated"] == NUM_PROMPTS
    unreadable = sum(result["unreadable"].values())
    records = [json.loads(x) for x in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert unreadable == sum(r["reason"] is not None for r in records)
    read = [r for r in records if r["reason"] is None]
    assert result["color_accuracy"] == sum(r["match"]["color"] for r in read) / NUM_PROMPTS
    again = run_attribute_match(params, str(artifact), tmp_path, LOCAL)
    assert again["generated"] == 0 and again["color_accuracy"] == result["color_accuracy"]


def test_captions_without_truth_are_named(artifact, world_set, tmp_path):
    bad = tmp_path / "truth.json"
    data = json.loads(world_set.coco_truth.read_text())
    data["objects"] = {k: v for k, v in data["objects"].items() if k != "1"}
    bad.write_text(json.dumps(data))
    params = _params(world_set, num_samples=8).model_copy(update={"truth": str(bad)})
    with pytest.raises(ValueError, match=r"no truth for COCO image ids \[1\]"):
        run_attribute_match(params, str(artifact), tmp_path / "out", LOCAL)
    bad.write_text(json.dumps({"objects": {}}))
    with pytest.raises(ValueError, match="not a world truth file"):
        run_attribute_match(params, str(artifact), tmp_path / "out2", LOCAL)
    assert not (tmp_path / "out2").exists()  # the truth is read before anything is generated
