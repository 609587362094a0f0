"""The tiny zoo loads like real towers, is byte-reproducible, and the real configs are right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from dreamray.model.layouts import diffusion_resolution
from dreamray.model.tokens import ADDITIONAL_SPECIAL_TOKENS, PAD
from dreamray.zoo import build_real_configs, build_tiny_zoo


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_zoo_loads_offline(tiny_zoo):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPVisionModel,
    )

    tok = AutoTokenizer.from_pretrained(tiny_zoo.llm, local_files_only=True)
    llm = AutoModelForCausalLM.from_pretrained(tiny_zoo.llm, local_files_only=True)
    assert llm.config.model_type == "llama"
    assert llm.config.vocab_size == len(tok)
    assert llm.config.max_position_embeddings == 512
    clip = CLIPVisionModel.from_pretrained(tiny_zoo.vision, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(tiny_zoo.vision, local_files_only=True)
    pixels = proc(images=torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8), return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 32, 32)
    out = clip(pixel_values=pixels["pixel_values"], output_hidden_states=True)
    assert out.hidden_states[-2].shape == (1, 17, 32)  # CLS + 16 patches
    unet = UNet2DConditionModel.from_pretrained(tiny_zoo.diffusion / "unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(tiny_zoo.diffusion / "vae", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(tiny_zoo.diffusion / "scheduler", local_files_only=True)
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.prediction_type == "epsilon"
    res = diffusion_resolution(tiny_zoo.diffusion)
    latents = vae.encode(torch.zeros(1, 3, res, res)).latent_dist.mean
    assert latents.shape[-1] == unet.config.sample_size
    assert unet.config.cross_attention_dim == 32


def test_tokenizer_lacks_dreamllm_tokens(tiny_zoo):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_zoo.llm, local_files_only=True)
    vocab = tok.get_vocab()
    assert tok.pad_token is None
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert not [t for t in (*ADDITIONAL_SPECIAL_TOKENS, PAD) if t in vocab]
    assert tok("a red dog").input_ids[0] == tok.bos_token_id


def test_same_seed_same_bytes_other_seed_differs(tiny_zoo, tmp_path):
    again = build_tiny_zoo(tmp_path / "again", seed=0)
    assert _hashes(again.llm.parent) == _hashes(tiny_zoo.llm.parent)
    other = _hashes(build_tiny_zoo(tmp_path / "other", seed=1).llm.parent)
    base = _hashes(tiny_zoo.llm.parent)
    for weights in ("llm/model.safetensors", "clip/model.safetensors",
                    "sd/unet/diffusion_pytorch_model.safetensors",
                    "sd/vae/diffusion_pytorch_model.safetensors"):
        assert other[weights] != base[weights], weights
    assert other["llm/tokenizer.json"] == base["llm/tokenizer.json"]


def test_rebuild_is_a_noop_and_foreign_dirs_are_refused(tiny_zoo, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_zoo.llm.parent.rglob("*")}
    build_tiny_zoo(tiny_zoo.llm.parent, seed=0)
    assert {p: p.stat().st_mtime_ns for p in tiny_zoo.llm.parent.rglob("*")} == before
    (tmp_path / "llm").mkdir()
    with pytest.raises(FileExistsError, match="zoo_stamp"):
        build_tiny_zoo(tmp_path, seed=0)


def test_real_configs(tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoConfig, AutoModelForCausalLM

    paths = build_real_configs(tmp_path)
    llm_cfg = AutoConfig.from_pretrained(paths.llm, local_files_only=True)
    assert (llm_cfg.hidden_size, llm_cfg.num_hidden_layers, llm_cfg.vocab_size) == (4096, 32, 32000)
    assert llm_cfg.max_position_embeddings == 2048
    clip_cfg = AutoConfig.from_pretrained(paths.vision, local_files_only=True)
    assert (clip_cfg.hidden_size, clip_cfg.image_size, clip_cfg.patch_size) == (1024, 224, 14)
    assert diffusion_resolution(paths.diffusion) == 512
    sched = DDPMScheduler.from_pretrained(paths.diffusion / "scheduler", local_files_only=True)
    assert sched.config.beta_schedule == "scaled_linear"
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_cfg)
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(paths.diffusion / "unet")
        )
    assert abs(sum(p.numel() for p in llm.parameters()) / 1e9 - 6.74) < 0.01
    assert abs(sum(p.numel() for p in unet.parameters()) / 1e6 - 865.9) < 0.5
    index = json.loads((paths.diffusion / "model_index.json").read_text())
    assert set(index) >= {"unet", "vae", "scheduler"}
