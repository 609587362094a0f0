"""Config-only directories of the real 7B recipe's towers (no weights), used by `dreamray.zoo`.

Values are those of the released files: ``lmsys/vicuna-7b-v1.1``, ``openai/clip-vit-large-patch14``
(vision part) and ``stabilityai/stable-diffusion-2-1-base``. They let shapes, parameter counts and
memory be planned on the meta device without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

from dreamray.contracts import CONFIG_FILE, MODEL_INDEX_FILE
from dreamray.files import atomic_write_json as write_json
from dreamray.model.layouts import clip_processor, model_index, sd_scheduler_kwargs

# the diffusers version string the released SD 2.1-base configs were written with
SD21_DIFFUSERS_VERSION = "0.10.0.dev0"


def write_llm(out_dir: Path) -> None:
    """Write Vicuna-7B v1.1's ``config.json`` (a LLaMA-1 7B).

    Args:
        out_dir: directory to create.
    """
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,  # Vicuna has none; DreamLLM adds `[PAD]` to the tokenizer
        tie_word_embeddings=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out_dir)


def write_vision(out_dir: Path) -> None:
    """Write CLIP ViT-L/14 (224 px) vision ``config.json`` and its image processor config.

    Args:
        out_dir: directory to create.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_channels=3,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    config.architectures = ["CLIPVisionModel"]
    config.save_pretrained(out_dir)
    clip_processor(CLIPImageProcessor, 224).save_pretrained(out_dir)


def write_diffusion(out_dir: Path) -> None:
    """Write SD 2.1-base's ``unet/``, ``vae/``, ``scheduler/`` configs and ``model_index.json``.

    The VAE's ``sample_size`` is 768 in the released file (a quirk kept as is); the model's
    resolution is 512 = UNet sample_size 64 x 8 (see
    `dreamray.model.layouts.diffusion_resolution`). The scheduler file is the released PNDM one;
    DreamLLM reads it with ``DDPMScheduler``.

    Args:
        out_dir: directory to create.
    """
    for sub in ("unet", "vae", "scheduler"):
        (out_dir / sub).mkdir(parents=True)
    write_json(out_dir / "unet" / CONFIG_FILE, _unet_config())
    write_json(out_dir / "vae" / CONFIG_FILE, _vae_config())
    scheduler = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": SD21_DIFFUSERS_VERSION,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "trained_betas": None,
        **sd_scheduler_kwargs(),
    }
    write_json(out_dir / "scheduler" / "scheduler_config.json", scheduler)
    write_json(out_dir / MODEL_INDEX_FILE, model_index(SD21_DIFFUSERS_VERSION, "PNDMScheduler"))


def _unet_config() -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": SD21_DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "use_linear_projection": True,
    }


def _vae_config() -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": SD21_DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 768,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
