"""The pretrained world zoo: real layouts that the model builder and diffusers load, a report of
what each tower learned, reuse by stamp, validated settings. Built here with a few steps each
(the learning itself is checked by tests/e2e/test_toy_learning.py and the zoo's own report)."""

from __future__ import annotations

import json

import pytest

from dreamray import zoo
from dreamray.model.layouts import diffusion_resolution
from dreamray.world_zoo import REPORT_FILE, WorldZooSettings, build_world_zoo

FEW = WorldZooSettings(num_scenes=40, vision_scenes=40, llm_steps=3, vision_steps=3,
                       vae_steps=2, unet_steps=3, batch_size=4, check_samples=3)


@pytest.fixture(scope="module")
def world_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_zoo")
    return out, build_world_zoo(out, FEW, seed=0, progress=False)


def test_world_zoo_loads_through_the_model_builder(world_zoo):
    from diffusers import DDIMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    from dreamray.config.specs import ModelSpec
    from dreamray.model.build import build_dreamllm

    _, paths = world_zoo
    spec = ModelSpec(llm_path=str(paths.llm), vision_path=str(paths.vision),
                     diffusion_path=str(paths.diffusion), num_dream_queries=4, max_length=128)
    model = build_dreamllm(spec)
    assert diffusion_resolution(paths.diffusion) == FEW.image_size
    assert model.stable_diffusion_head.scheduler.config.prediction_type == "v_prediction"
    text_encoder = CLIPTextModel.from_pretrained(paths.diffusion / "text_encoder")
    tok = AutoTokenizer.from_pretrained(paths.diffusion / "tokenizer")
    ids = tok(["a red circle on the left"], return_tensors="pt").input_ids
    assert text_encoder(ids).last_hidden_state.shape[-1] == model.stable_diffusion_head.unet.config[
        "cross_attention_dim"]
    index = json.loads((paths.diffusion / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and "tokenizer" in index
    DDIMScheduler.from_pretrained(paths.diffusion / "scheduler")
    llm_tok = AutoTokenizer.from_pretrained(paths.llm)
    assert llm_tok.pad_token is None  # like Vicuna: the model adds its own tokens


def test_report_rebuild_and_settings(world_zoo, tmp_path):
    out, paths = world_zoo
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report) == {"llm", "vision", "vae", "unet"}
    assert report["unet"]["steps"] == FEW.unet_steps
    assert set(report["unet"]["generation"]) >= {"color_accuracy", "position_accuracy", "n"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert build_world_zoo(out, FEW, seed=0, progress=False) == paths  # reused as it is
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    with pytest.raises(ValueError, match="unet_steps=0"):
        WorldZooSettings(unet_steps=0)
    with pytest.raises(ValueError, match="image_size 48"):
        WorldZooSettings(image_size=48)


def test_other_settings_rebuild_the_zoo_in_place(tmp_path):
    """A zoo of other settings is replaced whole: model dirs, report file and stamp."""
    from dataclasses import replace

    build_world_zoo(tmp_path, FEW, seed=0, progress=False)
    more = replace(FEW, unet_steps=FEW.unet_steps + 1)
    build_world_zoo(tmp_path, more, seed=0, progress=False)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["unet"]["steps"] == more.unet_steps
    stamp = json.loads((tmp_path / zoo.STAMP_FILE).read_text())
    assert stamp["settings"]["unet_steps"] == more.unet_steps
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_llm_corpus_answers_from_the_caption_before_it():
    """The LLM can only learn to read an image's tokens (or carry a prompt into the dream
    queries) if its text makes it answer from context: every answer is in the line's caption."""
    from dreamray.data.world.scene import WorldSpec
    from dreamray.data.world.text import DESCRIBE, questions
    from dreamray.world_zoo.samples import ROLES, world_corpus, world_scenes

    user, assistant = ROLES
    scenes = world_scenes(WorldSpec(), 30, seed=3, max_objects=3)
    lines = world_corpus(scenes, seed=0)
    assert len(lines) == 3 * len(scenes)
    for scene, line in zip(scenes, lines[2::3], strict=True):
        context, _, turns = line.partition("\n")
        assert context.startswith(f"{user} ") and DESCRIBE in turns
        for qa in questions(scene):
            assert f"{qa.question} {assistant}" in turns
            if qa.answer_type in ("color", "shape", "position"):
                assert qa.answer in context, (qa, context)
    assert all(d.startswith(f"{user} ") and f" {assistant} " in d for d in lines[1::3])


def test_vision_targets_name_the_object_on_each_patch():
    from dreamray.data.world.scene import Scene, WorldObject, WorldSpec
    from dreamray.world_zoo.towers import patch_targets

    spec = WorldSpec(image_size=32)
    scene = Scene(objects=(WorldObject("red", "circle", "top", "large"),
                           WorldObject("blue", "square", "bottom", "small")))
    targets = {k: t.view(4, 4) for k, t in patch_targets([scene], spec, 4).items()}
    red, circle, top = (1 + spec.colors.index("red"), 1 + spec.shapes.index("circle"),
                        1 + spec.positions.index("top"))
    blue, bottom = 1 + spec.colors.index("blue"), 1 + spec.positions.index("bottom")
    # the top object sits on the middle two columns of the upper rows, the bottom one below
    assert targets["color"][0, 1] == red and targets["shape"][0, 2] == circle
    assert targets["position"][0, 1] == top
    assert targets["color"][3, 1] == blue and targets["position"][3, 2] == bottom
    assert targets["size"][0, 1] == 1 + spec.sizes.index("large")
    # the corners and the outer columns show only background
    assert all(int(targets[k][r, c]) == 0 for k in targets for r in range(4) for c in (0, 3))
