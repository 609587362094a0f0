"""The model of `gpu_check.py`'s model step and generation: a random-init DreamLLM from tower
configs, and stage-II batches for it.

Two shapes of model:

- full: a ~1.2B-parameter Llama (width 2048, 20 layers, MLP 5632, 16 heads, vocabulary 32008 =
  Vicuna's 32000 + DreamLLM's 8 tokens) with the real CLIP ViT-L/14 (224 px, 256 patches) and
  SD 2.1-base (UNet + VAE, 512 px) shapes, read from the zoo's config-only directories
  (`dreamray.zoo.build_real_configs`); 64 dream queries;
- tiny: the tiny zoo's shapes (`dreamray.zoo`), with a UNet of 32 latents so that images are
  64 px.

Every tower is built from its config directly on the target device with random weights (no
file is written or read), which is what makes a ~2.5B-parameter composite affordable to set up
inside a short GPU session. The tokenizer is the tiny zoo's byte-level BPE in both shapes: the
benchmark draws token ids, it never reads text, and the full LLM keeps its 32008-row vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The full shape's LLM: ~1.2B parameters, Llama layout, Vicuna's vocabulary + DreamLLM's tokens.
FULL_LLM_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32008,
    "max_position_embeddings": 2048,
}
TINY_LATENT_SIZE = 32  # tiny UNet latents; the tiny VAE halves the side: 64 px images
SD21_RESOLUTION = 512
FULL_DREAM_QUERIES, TINY_DREAM_QUERIES = 64, 8  # the paper's Q; the tiny recipe's
ATTENTION = "sdpa"


def dream_queries(tiny: bool) -> int:
    """Q of the benchmark model."""
    return TINY_DREAM_QUERIES if tiny else FULL_DREAM_QUERIES


def image_side(tiny: bool) -> int:
    """The side of the images the diffusion head makes (and FID reads)."""
    return 2 * TINY_LATENT_SIZE if tiny else SD21_RESOLUTION


@dataclass(frozen=True)
class TowerDirs:
    """Config-only directories of the vision and diffusion towers."""

    vision: Path
    diffusion: Path


def write_tower_dirs(root: Path, tiny: bool) -> TowerDirs:
    """Write the towers' config directories (no weights) under `root`.

    Args:
        root: an empty directory.
        tiny: the tiny zoo's shapes (64 px) instead of CLIP ViT-L/14 + SD 2.1-base.

    Returns:
        The two directories.
    """
    if not tiny:
        from dreamray.zoo import build_real_configs

        paths = build_real_configs(root / "real")
        return TowerDirs(paths.vision, paths.diffusion)
    from transformers import CLIPImageProcessor

    from dreamray.model.layouts import clip_processor
    from dreamray.zoo import tiny_unet, tiny_vae, tiny_vision_config, write_scheduler_and_index

    vision, diffusion = root / "tiny" / "clip", root / "tiny" / "sd"
    config = tiny_vision_config()
    config.save_pretrained(vision)
    clip_processor(CLIPImageProcessor, config.image_size).save_pretrained(vision)
    tiny_unet(TINY_LATENT_SIZE).save_config(diffusion / "unet")
    tiny_vae(image_side(tiny=True)).save_config(diffusion / "vae")
    write_scheduler_and_index(diffusion)
    return TowerDirs(vision, diffusion)


def benchmark_tokenizer(out_dir: Path) -> Any:
    """The tiny zoo's tokenizer with DreamLLM's tokens added (saved under `out_dir`)."""
    from dreamray.model.tokens import add_dreamllm_tokens
    from dreamray.zoo_llm import build_tokenizer

    tokenizer = build_tokenizer(out_dir)
    add_dreamllm_tokens(tokenizer)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def llm_config(tokenizer: Any, tiny: bool) -> Any:
    """The LLM's config: the tiny zoo's, or the ~1.2B Llama of `FULL_LLM_SHAPE`.

    Args:
        tokenizer: the benchmark tokenizer (bos/eos ids; the tiny vocabulary size).
        tiny: which shape.

    Returns:
        A ``LlamaConfig`` asking for SDPA attention.
    """
    from transformers import LlamaConfig

    from dreamray.zoo_llm import tiny_llm_config

    if tiny:
        config = tiny_llm_config(tokenizer)
    else:
        config = LlamaConfig(**FULL_LLM_SHAPE, rms_norm_eps=1e-6, tie_word_embeddings=False,
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = ATTENTION
    return config


def build_random_dreamllm(spec, config: Any, tokenizer: Any, device: torch.device):
    """A DreamLLM with random weights, built from configs directly on `device` (fp32).

    The same composition as `dreamray.model.build.build_dreamllm`, with towers made from their
    configs instead of loaded from weight files.

    Args:
        spec: a `ModelSpec` whose vision / diffusion paths are config directories.
        config: the LLM's config (`llm_config`).
        tokenizer: a tokenizer holding DreamLLM's tokens.
        device: where every parameter is created.

    Returns:
        The model, towers frozen, in train mode.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from dreamray.model import towers
    from dreamray.model.dreamllm import DreamLLM
    from dreamray.model.plugins import DreamEmbedding

    cfg = towers.plugin_config(spec)
    vision_config = CLIPVisionConfig.from_dict(cfg.vision_config)
    vision_config._attn_implementation = ATTENTION
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(config)
        dim = int(config.hidden_size)
        vision = towers.vision_from_config(cfg, dim, clip=CLIPVisionModel(vision_config))
        unet = UNet2DConditionModel.from_config(cfg.unet_config)
        vae = AutoencoderKL.from_config(cfg.vae_config)
        head = towers.diffusion_from_config(cfg, dim, unet=unet, vae=vae)
        model = DreamLLM(llm, tokenizer, vision, DreamEmbedding(spec.num_dream_queries, dim),
                         head, cfg)
    towers.freeze_towers(model)
    if spec.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def _text_ids(tokenizer: Any, special: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def make_stage2_batch(model, rows: int, seq_len: int, images_per_row: int,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Stage-II rows of exactly `seq_len` tokens: text, then per image a joint block (DRM then
    IMG of the same image: it is both the diffusion target and, after it, the CLIP input).

    Args:
        model: the DreamLLM (token ids, block sizes, image sizes).
        rows: batch size B.
        seq_len: tokens per row L.
        images_per_row: joint blocks per row.
        seed: for the text ids and pixels.

    Returns:
        The batch contract: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``,
        ``clip_pixel_values`` ``[B*k, 3, S, S]``, ``sd_pixel_values`` ``[B*k, 3, R, R]``.

    Raises:
        ValueError: when the blocks leave less than one text token between them.
    """
    from dreamray.model.tokens import IGNORE_INDEX

    t = model.token_ids
    block = t.dream_block(model.num_queries) + t.image_block(model.num_patches)
    text_len = seq_len - 2 - images_per_row * len(block)  # 2: <s> and </s>
    if text_len < images_per_row + 1:
        raise ValueError(f"seq_len {seq_len} cannot hold {images_per_row} blocks of "
                         f"{len(block)} tokens with text around them")
    gen = torch.Generator().manual_seed(seed)
    special = {*t.__dict__.values(), *model.tokenizer.all_special_ids}
    pool = _text_ids(model.tokenizer, special)
    chunks = [text_len // (images_per_row + 1)] * images_per_row
    chunks.append(text_len - sum(chunks))
    input_ids = []
    for _ in range(rows):
        texts = [pool[torch.randint(len(pool), (n,), generator=gen)].tolist() for n in chunks]
        row = [t.bos]
        for text in texts[:-1]:
            row += text + block
        input_ids.append(row + texts[-1] + [t.eos])
    ids = torch.tensor(input_ids)
    labels = ids.clone()
    for tid in t.unsupervised_ids():
        labels[labels == tid] = IGNORE_INDEX
    n = rows * images_per_row
    clip, res = model.clip_vision_embedding.image_size, model.stable_diffusion_head.resolution
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "clip_pixel_values": torch.randn(n, 3, clip, clip, generator=gen),
        "sd_pixel_values": torch.rand(n, 3, res, res, generator=gen) * 2 - 1,
    }
