"""The diffusion side of generation: schedulers, seeded latents, the CFG denoising loop, decoding.

Pure torch + diffusers. Randomness comes only from the `torch.Generator`s passed in (the initial
latents AND the DDPM variance noise), drawn on the CPU and then moved: the same seed gives the
same initial noise on any device. A list of generators (one per image) makes each image
independent of the batch it was generated in (what a resumable FID eval needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from dreamray.model.diffusion import StableDiffusionHead

SchedulerKind = Literal["ddpm", "ddim"]
SCHEDULER_KINDS: tuple[str, ...] = ("ddpm", "ddim")
Generators = torch.Generator | list[torch.Generator]


def make_scheduler(head: StableDiffusionHead, kind: SchedulerKind):
    """A fresh sampling scheduler built from the head's (training) DDPM config.

    A new instance every call: `set_timesteps` mutates a scheduler, and the head's own one
    serves the training loss.

    Args:
        head: the diffusion head.
        kind: ``"ddpm"`` (the reference's eval sampler: stochastic ancestral DDPM) or ``"ddim"``.

    Returns:
        A diffusers scheduler.

    Raises:
        ValueError: for another kind.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind == "ddpm":
        return DDPMScheduler.from_config(head.scheduler.config)
    if kind == "ddim":
        return DDIMScheduler.from_config(head.scheduler.config)
    raise ValueError(f"scheduler must be one of {SCHEDULER_KINDS}, got {kind!r}")


def make_generators(seed: int | Sequence[int], batch_size: int) -> Generators:
    """CPU generators for a batch.

    Args:
        seed: one seed for the whole batch (one generator, drawn in batch order), or one seed
            per image (each image then depends only on its own seed).
        batch_size: the number of images.

    Returns:
        A generator, or a list of `batch_size` generators.

    Raises:
        ValueError: when a seed list does not have `batch_size` entries.
    """
    if isinstance(seed, int):
        return torch.Generator("cpu").manual_seed(seed)
    seeds = list(seed)
    if len(seeds) != batch_size:
        raise ValueError(f"{len(seeds)} seeds for {batch_size} images")
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def latent_shape(head: StableDiffusionHead, batch_size: int) -> tuple[int, int, int, int]:
    """``[B, C, h, w]`` of the UNet's latents (h = w = UNet sample size)."""
    cfg = head.unet.config
    return (batch_size, int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))


def initial_latents(
    head: StableDiffusionHead, batch_size: int, generator: Generators, device: torch.device
) -> torch.Tensor:
    """Gaussian latents in float32, drawn on the CPU from `generator`, moved to `device`."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = latent_shape(head, batch_size)
    return randn_tensor(shape, generator=generator, device=torch.device("cpu")).to(device)


def denoise_latents(
    head: StableDiffusionHead,
    condition: torch.Tensor,
    uncondition: torch.Tensor | None,
    guidance_scale: float,
    scheduler,
    num_inference_steps: int,
    generator: Generators,
    eta: float = 0.0,
) -> torch.Tensor:
    """The sampling loop with classifier-free guidance.

    Args:
        head: the diffusion head (its UNet predicts epsilon or v per the scheduler config).
        condition: projected condition ``[B, Q, C]``.
        uncondition: projected unconditional condition ``[B, Q, C]``; None (or guidance 1.0)
            runs the conditional branch only: ``u + 1 * (c - u) = c`` without a second UNet pass.
        guidance_scale: w in ``u + w * (c - u)``.
        scheduler: from `make_scheduler` (fresh; its timesteps are set here).
        num_inference_steps: denoising steps.
        generator: for the initial latents and the DDPM variance noise.
        eta: DDIM's eta (ignored by DDPM).

    Returns:
        Final latents ``[B, C, h, w]`` (float32, still scaled by the VAE scaling factor).
    """
    device = condition.device
    batch = condition.shape[0]
    use_cfg = uncondition is not None and guidance_scale != 1.0
    cond = torch.cat([uncondition, condition]) if use_cfg else condition
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = initial_latents(head, batch, generator, device) * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator}
    if "eta" in _step_parameters(scheduler):
        step_kwargs["eta"] = eta
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        steps = t.expand(model_in.shape[0]).to(device)
        pred = head.denoise(model_in, steps, cond).float()
        if use_cfg:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    return latents


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def decode_latents(head: StableDiffusionHead, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode latents to uint8 images.

    Args:
        head: the diffusion head.
        latents: ``[B, C, h, w]`` as sampled (times the scaling factor).

    Returns:
        ``uint8 [B, R, R, 3]``.
    """
    vae = head.vae
    vae_dtype = next(vae.parameters()).dtype
    pixels = vae.decode((latents / vae.config.scaling_factor).to(vae_dtype)).sample
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    # round, not truncate: what diffusers' numpy_to_pil does
    return (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list:
    """``uint8 [B, H, W, 3]`` -> RGB PIL images."""
    from PIL import Image

    return [Image.fromarray(image) for image in images]
