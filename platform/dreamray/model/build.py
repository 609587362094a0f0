"""Building a fresh DreamLLM from the base towers of a `ModelSpec`: stage I's start.

`build_dreamllm` loads the base LLM, CLIP and SD from their local dirs, adds DreamLLM's tokens to
the tokenizer (resizing the embeddings) and creates fresh projectors and queries.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamray.config.specs import ModelSpec
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.plugins import DreamEmbedding
from dreamray.model.towers import (
    LOCAL_DIFFUSERS,
    diffusion_from_config,
    freeze_towers,
    load_llm,
    plugin_config,
    vision_from_config,
)


def build_dreamllm(spec: ModelSpec, dtype: torch.dtype | None = None) -> DreamLLM:
    """Load the base towers named by `spec` and compose a fresh DreamLLM.

    Args:
        spec: paths of the base LLM, CLIP and SD dirs and the plugin shapes.
        dtype: parameter dtype of every part (None: fp32 plugins, the LLM as stored).

    Returns:
        The model (``model.tokenizer`` holds the tokenizer with DreamLLM's tokens). Random parts
        (queries, projectors) are drawn from torch's global RNG: seed it first.

    Raises:
        ValueError: when ``spec.max_length`` exceeds the LLM's ``max_position_embeddings``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModel

    llm, tokenizer = load_llm(spec.llm_path, dtype)
    max_pos = getattr(llm.config, "max_position_embeddings", None)
    if max_pos is not None and spec.max_length > max_pos:
        raise ValueError(
            f"max_length {spec.max_length} > the LLM's max_position_embeddings {max_pos}"
        )
    cfg = plugin_config(spec)
    dim = llm.get_input_embeddings().embedding_dim
    clip = CLIPVisionModel.from_pretrained(spec.vision_path, local_files_only=True)
    sd = Path(spec.diffusion_path)
    unet = UNet2DConditionModel.from_pretrained(sd / "unet", **LOCAL_DIFFUSERS)
    vae = AutoencoderKL.from_pretrained(sd / "vae", **LOCAL_DIFFUSERS)
    model = DreamLLM(
        llm,
        tokenizer,
        vision_from_config(cfg, dim, clip=clip),
        DreamEmbedding(spec.num_dream_queries, dim),
        diffusion_from_config(cfg, dim, unet=unet, vae=vae),
        cfg,
    )
    freeze_towers(model)
    if dtype is not None:
        model.to(dtype)
    if spec.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
