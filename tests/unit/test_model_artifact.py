"""Artifact dirs: exact round trips, the reference's file names and keys, clear load errors."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import built_model, tiny_spec
from safetensors.torch import load_file

from dreamray.model.artifact import (
    ArtifactError,
    load_plugins_into,
    to_file_keys,
)
from dreamray.model.dreamllm import DreamLLM


@pytest.fixture(scope="module")
def saved(tiny_zoo, tmp_path_factory):
    model = built_model(tiny_zoo)
    with torch.no_grad():  # move the plugins off their init so a mix-up would show
        for p in model.parameters():
            p.add_(0.01)
    out = tmp_path_factory.mktemp("artifact") / "stage"
    model.save_pretrained(out)
    return model, out


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_round_trip_is_bit_exact(saved):
    model, out = saved
    loaded = DreamLLM.from_pretrained(out)
    _assert_same_tensors(model.state_dict(), loaded.state_dict())
    assert loaded.token_ids == model.token_ids
    assert loaded.dreamllm_config == model.dreamllm_config
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_files_and_keys_are_the_reference_layout(saved, tiny_zoo):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPVisionModel

    model, out = saved
    fresh_clip = CLIPVisionModel.from_pretrained(tiny_zoo.vision).state_dict()
    # transformers 5 dropped the `vision_model.` level; the files keep the reference's keys
    clip_keys = {
        f"clip_vision_model.vision_model.{k.removeprefix('vision_model.')}" for k in fresh_clip
    }
    vision = torch.load(out / "clip_vision_embedding.bin", weights_only=True)
    assert set(vision) == clip_keys | {"projector.projector.weight", "projector.projector.bias"}
    dream = torch.load(out / "dream_embedding.bin", weights_only=True)
    assert set(dream) == {"dream_queries"} and dream["dream_queries"].shape == (1, 8, 64)
    head = torch.load(out / "stable_diffusion_head.bin", weights_only=True)
    sd = tiny_zoo.diffusion
    unet = {f"unet.{k}" for k in UNet2DConditionModel.from_pretrained(sd / "unet").state_dict()}
    vae = {f"vae.{k}" for k in AutoencoderKL.from_pretrained(sd / "vae").state_dict()}
    assert set(head) == unet | vae | {"projector.projector.weight"}
    llm = load_file(out / "model.safetensors")
    assert set(llm) == set(model.llm.state_dict())
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(llm)
    config = json.loads((out / "config.json").read_text())
    # model type `dreamllm` (so the HF auto classes route the dir to DreamLLM), the LLM's nested
    assert config["model_type"] == "dreamllm" and config["dreamllm"]["num_dream_queries"] == 8
    assert config["llm_config"]["model_type"] == "llama"
    assert config["llm_config"]["vocab_size"] == len(model.tokenizer)
    assert config["tie_word_embeddings"] is False
    assert AutoTokenizer.from_pretrained(out).get_vocab() == model.tokenizer.get_vocab()
    assert AutoImageProcessor.from_pretrained(out).crop_size == {"height": 32, "width": 32}


def test_stage2_start_base_llm_plus_merged_plugins(saved, tiny_zoo):
    trained, out = saved
    base = built_model(tiny_zoo)
    llm_before = {k: v.clone() for k, v in base.llm.state_dict().items()}
    load_plugins_into(base, out)
    _assert_same_tensors(base.llm.state_dict(), llm_before)
    for name in ("clip_vision_embedding", "dream_embedding", "stable_diffusion_head"):
        _assert_same_tensors(getattr(base, name).state_dict(), getattr(trained, name).state_dict())


def test_released_single_file_layout_loads(saved, tiny_zoo, tmp_path):
    model, out = saved
    full = dict(model.llm.state_dict())
    prefixes = {
        "clip_vision_embedding": "model.clip_vision_embedding.",
        "dream_embedding": "model.dream_embedding.",
        "stable_diffusion_head": "stable_diffusion_head.",
    }
    for name, prefix in prefixes.items():
        state = to_file_keys(model, name, getattr(model, name).state_dict())
        full.update({prefix + k: v for k, v in state.items()})
    assert any(
        k.startswith("model.clip_vision_embedding.clip_vision_model.vision_model.") for k in full
    )
    torch.save(full, tmp_path / "pytorch_model.bin")
    # the released config.json: the LLaMA fields at the top level, typed `dreamllm`
    config = json.loads((out / "config.json").read_text())["llm_config"]
    config.update(model_type="dreamllm", architectures=["DreamLLMForCausalMLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    model.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="released checkpoint"):
        DreamLLM.from_pretrained(tmp_path)
    loaded = DreamLLM.from_pretrained(tmp_path, spec=tiny_spec(tiny_zoo))
    _assert_same_tensors(model.state_dict(), loaded.state_dict())


def test_load_errors_name_the_file_and_key(saved, tmp_path):
    import shutil

    model, out = saved
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "dream_embedding.bin").unlink()
    with pytest.raises(ArtifactError, match="dream_embedding.bin"):
        DreamLLM.from_pretrained(broken)
    torch.save({"dream_queries": torch.zeros(1, 5, 64)}, broken / "dream_embedding.bin")
    with pytest.raises(
        ArtifactError, match=r"dream_queries: file \(1, 5, 64\) vs model \(1, 8, 64\)"
    ):
        load_plugins_into(model, broken)
    state = torch.load(out / "stable_diffusion_head.bin", weights_only=True)
    state["projector.projector.bias"] = torch.zeros(32)
    del state["vae.encoder.conv_in.bias"]
    torch.save(state, broken / "stable_diffusion_head.bin")
    torch.save({"dream_queries": torch.zeros(1, 8, 64)}, broken / "dream_embedding.bin")
    with pytest.raises(
        ArtifactError,
        match=r"missing keys \[vae.encoder.conv_in.bias\].*"
        r"unexpected keys \[projector.projector.bias\]",
    ):
        load_plugins_into(model, broken)


def test_save_replaces_an_existing_dir(saved, tmp_path):
    model, _ = saved
    target = tmp_path / "art"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    model.save_pretrained(target)
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").is_file()
