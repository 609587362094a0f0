"""The towers of a DreamLLM, loaded or rebuilt: the LLM with DreamLLM's tokens, the tower
configs of a `ModelSpec` (`plugin_config`), and the vision and diffusion plugins built from a
`DreamLLMConfig` with no weights loaded yet (`*_from_config`), for `dreamray.model.artifact` to
fill or `dreamray.model.build` to compose with loaded towers.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dreamray.config.specs import ModelSpec
from dreamray.model.diffusion import StableDiffusionHead
from dreamray.model.plugin_config import DreamLLMConfig
from dreamray.model.plugins import CLIPVisionEmbedding, Projector
from dreamray.model.tokens import add_dreamllm_tokens

if TYPE_CHECKING:
    from dreamray.model.dreamllm import DreamLLM

# low_cpu_mem_usage needs `accelerate`, which is not a dependency: ask for the plain path
# explicitly so diffusers does not warn on every load
LOCAL_DIFFUSERS = {"local_files_only": True, "low_cpu_mem_usage": False}


@contextmanager
def skip_init():
    """Skip random initialisation while building towers whose weights are loaded right after."""
    from diffusers.models.modeling_utils import no_init_weights as diffusers_no_init
    from transformers.initialization import no_init_weights as hf_no_init

    with hf_no_init(), diffusers_no_init():
        yield


def resize_for_tokenizer(llm: nn.Module, num_tokens: int) -> None:
    """Grow the input and output embeddings to `num_tokens` rows; new rows = mean of the old.

    The mean init (as LLaVA does) keeps the new tokens' logits and inputs in the range of real
    tokens; it is also deterministic, unlike HF's sampled default.

    Args:
        llm: an HF causal LM.
        num_tokens: the tokenizer's length.
    """
    old = llm.get_input_embeddings().num_embeddings
    if num_tokens <= old:
        return
    llm.resize_token_embeddings(num_tokens, mean_resizing=False)
    with torch.no_grad():
        for emb in (llm.get_input_embeddings(), llm.get_output_embeddings()):
            if emb is not None:
                emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    llm.config.vocab_size = num_tokens


def load_llm(path: str | Path, dtype: torch.dtype | None) -> tuple[nn.Module, Any]:
    """Load an HF causal LM and its tokenizer from a local dir, with DreamLLM's tokens added.

    Args:
        path: the HF model dir.
        dtype: the LLM's parameter dtype (None: as stored).

    Returns:
        ``(llm, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    add_dreamllm_tokens(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    resize_for_tokenizer(llm, len(tokenizer))
    return llm, tokenizer


def plugin_config(spec: ModelSpec) -> DreamLLMConfig:
    """Read the tower configs named by a spec into a `DreamLLMConfig` (no weights are read).

    Args:
        spec: the model spec.

    Returns:
        The plugin configuration.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    sd = Path(spec.diffusion_path)
    processor = CLIPImageProcessor.from_pretrained(spec.vision_path, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(sd / "scheduler", local_files_only=True)
    # through JSON once, so the config equals what an artifact's config.json reads back
    normal = json.loads(
        json.dumps(
            {
                "vision_config": CLIPVisionConfig.from_pretrained(spec.vision_path).to_dict(),
                "image_processor": processor.to_dict(),
                "unet_config": dict(UNet2DConditionModel.load_config(sd / "unet")),
                "vae_config": dict(AutoencoderKL.load_config(sd / "vae")),
                "scheduler_config": dict(scheduler.config),
            }
        )
    )
    return DreamLLMConfig(
        num_dream_queries=spec.num_dream_queries,
        vision_select_layer=spec.vision_select_layer,
        vision_projector=spec.vision_projector,
        condition_projector=spec.condition_projector,
        condition_dropout=spec.condition_dropout,
        snr_gamma=spec.snr_gamma,
        **normal,
    )


def vision_from_config(cfg: DreamLLMConfig, llm_dim: int, clip: nn.Module | None = None):
    """The vision plugin: a CLIP tower (given, or built from the config) + a fresh projector.

    Args:
        cfg: plugin configuration.
        llm_dim: the LLM hidden size.
        clip: a loaded ``CLIPVisionModel``; None builds an uninitialised one from the config.

    Returns:
        A `CLIPVisionEmbedding`.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if clip is None:
        with skip_init():
            clip = CLIPVisionModel(CLIPVisionConfig.from_dict(cfg.vision_config))
    projector = Projector(cfg.vision_projector, clip.config.hidden_size, llm_dim, bias=True)
    return CLIPVisionEmbedding(clip, projector, cfg.vision_select_layer)


def diffusion_from_config(
    cfg: DreamLLMConfig, llm_dim: int, unet: nn.Module | None = None, vae: nn.Module | None = None
) -> StableDiffusionHead:
    """The diffusion head: UNet and VAE (given, or built from the config) + a fresh projector.

    Args:
        cfg: plugin configuration.
        llm_dim: the LLM hidden size.
        unet, vae: loaded towers; None builds uninitialised ones from the config.

    Returns:
        A `StableDiffusionHead`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    with skip_init():
        unet = unet if unet is not None else UNet2DConditionModel.from_config(cfg.unet_config)
        vae = vae if vae is not None else AutoencoderKL.from_config(cfg.vae_config)
    scheduler = DDPMScheduler.from_config(cfg.scheduler_config)
    cross = unet.config.cross_attention_dim
    projector = Projector(cfg.condition_projector, llm_dim, cross, bias=False)
    return StableDiffusionHead(vae, unet, scheduler, projector)


def freeze_towers(model: DreamLLM) -> None:
    """CLIP, VAE and UNet never train: no gradients, eval mode."""
    for tower in model.frozen_towers():
        tower.requires_grad_(False)
    model.train(model.training)
