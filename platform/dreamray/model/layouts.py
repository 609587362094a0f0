"""Facts of the released Hugging Face / diffusers layouts that every layer reads: an SD dir's
pixel resolution, the OpenAI-CLIP image processor, SD 2.x's noise schedule and a diffusers
``model_index.json``. The tiny and world zoos build their dirs with them, the data transforms and
evals read dirs with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dreamray.contracts import CONFIG_FILE

# OpenAI CLIP's normalisation (CLIP ViT-L/14's preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def diffusion_resolution(diffusion_dir: str | Path) -> int:
    """The pixel resolution R of an SD dir: UNet latent size x the VAE's downsampling factor.

    The VAE's own ``sample_size`` is not used: SD 2.1-base ships 768 there although it is a
    512 px model; the UNet's latent size is the reliable number.

    Args:
        diffusion_dir: a diffusers SD directory with ``unet/`` and ``vae/`` configs.

    Returns:
        The image side in pixels (512 for SD 2.1-base).
    """
    root = Path(diffusion_dir)
    unet = json.loads((root / "unet" / CONFIG_FILE).read_text())
    vae = json.loads((root / "vae" / CONFIG_FILE).read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def clip_processor(cls: Any, side: int) -> Any:
    """An OpenAI-CLIP image processor: shortest side `side` (bicubic), center crop, CLIP mean/std.

    Args:
        cls: the processor class (``CLIPImageProcessor``), passed in to keep imports lazy.
        side: the square input size of the vision tower.

    Returns:
        The processor instance.
    """
    return cls(
        do_resize=True,
        size={"shortest_edge": side},
        resample=3,  # bicubic, as OpenAI CLIP
        do_center_crop=True,
        crop_size={"height": side, "width": side},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def sd_scheduler_kwargs(prediction_type: str = "epsilon") -> dict[str, Any]:
    """SD 2.x's training noise schedule, as DDPMScheduler keyword arguments.

    Args:
        prediction_type: what the UNet predicts: ``epsilon`` (SD 2.1-base) or
            ``v_prediction`` (SD 2.1 at 768 px).

    Returns:
        The keyword arguments.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "clip_sample": False,
        "steps_offset": 1,
    }


def model_index(version: str, scheduler_class: str) -> dict[str, Any]:
    """A diffusers ``model_index.json`` naming only what DreamLLM uses (unet, vae, scheduler).

    Args:
        version: the diffusers version string to record.
        scheduler_class: the scheduler class name of the ``scheduler/`` folder.

    Returns:
        The index as a dict.
    """
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": version,
        "scheduler": ["diffusers", scheduler_class],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
