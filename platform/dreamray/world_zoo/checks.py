"""The world zoo's build-time checks: the attribute reader on the VAE's reconstructions and on
the UNet's own text-conditioned samples of held-out prompts."""

from __future__ import annotations

import random
from typing import Any

import torch
from PIL import Image

from dreamray.data.world.scene import WorldSpec, sample_scene
from dreamray.data.world.text import caption
from dreamray.evals.attributes import read_image, score_attributes
from dreamray.world_zoo.samples import render_pixels

CHECK_STEPS = 25  # DDIM steps of the UNet check
CHECK_GUIDANCE = 3.0


def to_pil(image: torch.Tensor) -> Image.Image:
    """A [3, S, S] image in [-1, 1] as a PIL image."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def _scores(images: torch.Tensor, truths: list[dict], spec: WorldSpec) -> dict[str, Any]:
    values = {"color": spec.colors, "shape": spec.shapes, "position": spec.positions}
    readings = [read_image(to_pil(im)) for im in images]
    return score_attributes(readings, truths, values).metrics()


def check_diffusion(vae: Any, unet: Any, text_encoder: Any, tok: Any, spec: WorldSpec,
                    num_prompts: int, seed: int) -> dict[str, dict[str, Any]]:
    """Read held-out single-object scenes back from the VAE and from the UNet.

    Args:
        vae, unet, text_encoder, tok: the trained diffusion towers.
        spec: the world.
        num_prompts: held-out scenes.
        seed: their seed (other than the training scenes').

    Returns:
        `reconstruction` and `generation`: `AttributeScores.metrics()` of each.
    """
    from dreamray.world_zoo.diffusion import encode_text, sample_images

    rng = random.Random(f"world-zoo-check/{seed}")
    scenes = [sample_scene(rng, spec, 1) for _ in range(num_prompts)]
    truths = [s.truth()[0] for s in scenes]
    pixels = render_pixels(scenes, spec)
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        conditions = encode_text(tok, text_encoder, [caption(s, rng) for s in scenes])
        empty = encode_text(tok, text_encoder, [""] * num_prompts)
    generated = sample_images(vae, unet, conditions, empty, CHECK_STEPS, CHECK_GUIDANCE, seed)
    return {"reconstruction": _scores(recon, truths, spec),
            "generation": _scores(generated, truths, spec)}
