"""A train stage's model card: YAML front matter a Hub reader parses, then the stage's facts."""

from __future__ import annotations

import pytest
import yaml

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import MODEL_CARD_FILE
from dreamray.model.model_card import model_card


def _stage(init: dict) -> TrainStageSpec:
    return TrainStageSpec.model_validate({
        "model": {"llm_path": "/zoo/vicuna-7b-v1.1", "vision_path": "/zoo/clip-vit-l-14",
                  "diffusion_path": "/zoo/sd-2-1-base"},
        "init": init,
        "trainable": ["llm", "vision_projector"],
        "data": {"sources": [{"name": "mmc4", "path": "/data/mmc4", "weight": 3.0},
                             {"name": "blip_laion", "path": "/data/blip", "weight": 1.0}],
                 "mode": "joint", "num_samples": 400},
        "optim": {"lr": 2e-5}, "loss": {"lm": 1.0, "vm": 10.0},
        "deepspeed": {"global_batch_size": 4, "micro_batch_per_gpu": 1},
    })


def _front_matter(card: str) -> dict:
    head, sep, _ = card.removeprefix("---\n").partition("\n---\n")
    assert card.startswith("---\n") and sep
    return yaml.safe_load(head)


def test_a_stage_from_another_stages_artifact():
    stage = _stage({"llm": "stage:stage2", "plugins": "stage:stage2"})
    card = model_card(stage, "sft", 400, {"mmc4": 290, "blip_laion": 110},
                      {"loss": 1.234567891, "lm_loss": 0.5, "step": 100},
                      {"too_long": 3}, {"stage2": "/runs/r/artifacts/stage2-abc"}, recipe="7b")
    meta = _front_matter(card)
    assert meta["library_name"] == "dreamray"
    assert {"dreamllm", "multimodal", "joint"} <= set(meta["tags"])
    assert meta["base_model"] == ["stage:stage2 (/runs/r/artifacts/stage2-abc)"]
    body = card.split("\n---\n", 1)[1]
    assert "# dreamray stage `sft`" in body and "Recipe: `7b`" in body
    assert "| mmc4 | `/data/mmc4` | 3 | 290 |" in body
    assert "| blip_laion | `/data/blip` | 1 | 110 |" in body
    assert "400 samples in all." in body and "Skipped: too_long 3" in body
    assert "- loss: 1.23457" in body and "- step: 100" in body


def test_a_stage_from_the_base_towers_names_each_tower_once():
    stage = _stage({"llm": "base", "plugins": "base"})
    card = model_card(stage, "stage1", 0, {}, {}, {}, {})
    assert "| mmc4 | `/data/mmc4` | 3 | not recorded |" in card
    assert _front_matter(card)["base_model"] == [
        "/zoo/vicuna-7b-v1.1", "/zoo/clip-vit-l-14", "/zoo/sd-2-1-base"]
    assert "Recipe: not recorded" in card and "- none recorded" in card
    assert "Skipped" not in card
    assert MODEL_CARD_FILE == "README.md"


def test_a_negative_sample_count_is_refused():
    with pytest.raises(ValueError, match="samples"):
        model_card(_stage({}), "s", -1, {}, {}, {}, {})
