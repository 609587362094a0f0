"""Any HF causal LM as the base: the tiny zoo's Llama, Mistral and Qwen2 LLMs (one builder) through
forward + backward, the trainable groups, the artifact round trip and generation."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import make_batch, tiny_spec

from dreamray.model.artifact import ArtifactError
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.generation import generate_images, generate_text
from dreamray.model.groups import count_parameters_by_group, freeze_all_but, parameters_by_group
from dreamray.model.reference_config import TowerPaths
from dreamray.zoo import LLM_FAMILIES, ZooPaths, build_tiny_llm

MODEL_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}


@pytest.fixture(scope="module", params=LLM_FAMILIES, ids=lambda f: f.name)
def family_model(request, tiny_zoo, tmp_path_factory):
    from dreamray.model.build import build_dreamllm

    family = request.param
    llm = build_tiny_llm(tmp_path_factory.mktemp(family.name) / "llm", seed=0, family=family)
    zoo = ZooPaths(llm=llm, vision=tiny_zoo.vision, diffusion=tiny_zoo.diffusion)
    torch.manual_seed(0)
    return family, zoo, build_dreamllm(tiny_spec(zoo))


def test_the_llm_is_the_family_s_causal_lm(family_model):
    family, _, model = family_model
    assert type(model.llm).__name__ == MODEL_CLASSES[family.name]
    assert model.llm.config.model_type == family.name


def test_forward_and_backward_reach_every_trainable_group(family_model):
    _, _, model = family_model
    model.train()
    out = model(**make_batch(model, "mixed"), lm_weight=1.0, vm_weight=10.0)
    assert torch.isfinite(out.loss) and out.num_dreams == 1 and out.num_images == 2
    out.loss.backward()
    for group, params in parameters_by_group(model).items():
        grads = [p.grad for _, p in params if p.requires_grad]
        assert all(g is not None for g in grads), group
    model.zero_grad(set_to_none=True)


def test_trainable_groups_partition_the_family_s_parameters(family_model):
    _, _, model = family_model
    by_group = parameters_by_group(model)
    assert [n for n, _ in by_group["embed_tokens"]] == ["llm.model.embed_tokens.weight"]
    assert [n for n, _ in by_group["lm_head"]] == ["llm.lm_head.weight"]
    assert {n.split(".")[2] for n, _ in by_group["llm"]} == {"layers", "norm"}
    counts = count_parameters_by_group(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    trainable = freeze_all_but(model, ["llm", "dream_queries"])
    assert trainable == {"llm": counts["llm"], "dream_queries": counts["dream_queries"]}
    assert not model.llm.lm_head.weight.requires_grad
    freeze_all_but(model, ["llm", "embed_tokens", "lm_head", "vision_projector",
                           "dream_queries", "condition_projector"])


def test_artifact_round_trip_is_bit_exact(family_model, tmp_path):
    family, zoo, model = family_model
    out = model.save_pretrained(tmp_path / "art")
    loaded = DreamLLM.from_pretrained(out)
    assert loaded.llm.config.model_type == family.name
    theirs = loaded.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(theirs[key], tensor), key
    towers = TowerPaths(str(zoo.vision), str(zoo.diffusion))
    if family.name == "llama":
        assert DreamLLM.from_pretrained(
            model.save_pretrained(tmp_path / "ref", layout="reference", towers=towers)
        ).llm.config.model_type == "llama"
    else:  # the reference's config and weights hold a LLaMA decoder only
        with pytest.raises(ArtifactError, match=f"LLaMA decoder only.*{family.name}"):
            model.save_pretrained(tmp_path / "ref", layout="reference", towers=towers)


def test_generation_runs(family_model):
    _, _, model = family_model
    text = generate_text(model, ["a red dog", "draw a cat"], max_new_tokens=4)
    assert len(text) == 2 and all(isinstance(t, str) for t in text)
    images = generate_images(model, ["a red dog"], guidance_scale=2.0, num_inference_steps=2)
    assert images[0].size == (16, 16)


def test_the_zoo_cli_builds_a_family_s_zoo(tmp_path, capsys):
    import json

    from dreamray.zoo import main

    assert main(["tiny", "--out", str(tmp_path), "--family", "qwen2"]) == 0
    paths = json.loads(capsys.readouterr().out)
    config = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert paths["llm"] == str(tmp_path / "llm") and config["model_type"] == "qwen2"
    with pytest.raises(SystemExit):
        main(["tiny", "--out", str(tmp_path / "x"), "--family", "gpt2"])
