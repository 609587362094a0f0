"""The pretrained world zoo's Stable Diffusion dir: a KL autoencoder trained to reconstruct
scenes, and a UNet trained with a tiny CLIP text encoder as a text-conditional denoiser of the
world's captions, so that the frozen UNet of stage I draws once the dream queries learn to give
it a condition like the text encoder's. Saved in the SD 2.1 layout, `text_encoder/` and
`tokenizer/` included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamray import zoo
from dreamray.data.world.scene import BACKGROUND, WorldSpec
from dreamray.model.layouts import sd_scheduler_kwargs
from dreamray.world_zoo.samples import WorldSamples
from dreamray.world_zoo.training import LossCurve, batch_indices, train_steps

# The text encoder's length: the longest world caption is ~20 pieces with <s> and </s>.
TEXT_LENGTH = 24
# The VAE's reconstruction weight on shape pixels: the flat background is ~95% of an image, and
# without it the VAE learns the background and blurs the colours away.
FOREGROUND_WEIGHT = 20.0
BACKGROUND_TOLERANCE = 0.1  # |pixel - background| in [-1, 1] units above which a pixel is shape
CAPTION_DROPOUT = 0.1  # empty captions, so classifier-free guidance has an unconditional model
TRAIN_TIMESTEPS = 1000
# v-prediction (SD 2.1's 768 px target) rather than epsilon: where a shape goes is decided at
# high noise, where an epsilon target carries almost nothing of the image; trained on epsilon,
# the tiny UNet learned colours but put shapes anywhere.
PREDICTION_TYPE = "v_prediction"
UNET_LR = 2e-3


def world_vae(image_size: int) -> Any:
    """The world's KL autoencoder: 4 latent channels, two 2x downsamplings (latents = side / 4),
    so that the UNet works on 8x8 latents of a 32 px scene."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64), norm_num_groups=32, sample_size=image_size,
    )


def world_unet(latent_size: int) -> Any:
    """The world's UNet: three levels down to 2x2 with cross-attention on the upper two and
    in the middle block. A tiny UNet has no other sense of where a pixel is than the zero
    padding seen from its coarsest levels: "on the left" needs them."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4),
        cross_attention_dim=zoo.TINY_CROSS_ATTENTION_DIM, norm_num_groups=32,
        use_linear_projection=True,
    )


def _background() -> torch.Tensor:
    return torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0


def train_vae(samples: WorldSamples, spec: WorldSpec, steps: int, batch_size: int, seed: int,
              progress: bool) -> tuple[Any, LossCurve, torch.Tensor]:
    """Train the KL autoencoder to reconstruct scenes (shape pixels weighted up), and set its
    `scaling_factor` to 1 / std of the latents, as SD's was chosen.

    Returns:
        (the VAE, its loss curve, the samples' latents times the scaling factor: what the UNet
        trains on).
    """
    torch.manual_seed(seed + 3)
    vae = world_vae(spec.image_size)
    background = _background()

    def loss_of_step(step: int, g: torch.Generator) -> torch.Tensor:
        x = samples.pixels[batch_indices(g, len(samples.pixels), batch_size)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        shape = ((x - background).abs().amax(dim=1, keepdim=True) > BACKGROUND_TOLERANCE)
        weight = 1.0 + FOREGROUND_WEIGHT * shape.float()
        return (weight * (recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()

    curve = train_steps(vae.parameters(), loss_of_step, steps, 2e-3, seed, "vae", progress)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mode()
                             for chunk in samples.pixels.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, curve, latents * vae.config.scaling_factor


def text_encoder_and_tokenizer(out_dir: Path, captions: list[str], seed: int) -> tuple[Any, Any]:
    """A tiny CLIP text encoder (width = the UNet's condition width) and its tokenizer, trained
    on the captions' pieces; the tokenizer is saved to `out_dir`.

    Returns:
        (the text encoder, the tokenizer).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = zoo.build_tokenizer(out_dir, captions)
    tok.pad_token = tok.eos_token
    tok.model_max_length = TEXT_LENGTH
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed + 4)
    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=zoo.TINY_CROSS_ATTENTION_DIM, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TEXT_LENGTH,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(config), tok


def encode_text(tok: Any, text_encoder: Any, captions: list[str]) -> torch.Tensor:
    """The UNet condition of `captions`: the text encoder's last hidden states [B, L, D]."""
    ids = tok(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
              return_tensors="pt").input_ids
    return text_encoder(ids).last_hidden_state


def train_unet(latents: torch.Tensor, text_encoder: Any, tok: Any, samples: WorldSamples,
               steps: int, batch_size: int, seed: int, progress: bool) -> tuple[Any, LossCurve]:
    """Train the UNet (`PREDICTION_TYPE`, SD 2.x's noise schedule) and the text encoder
    together on the world's captions, with `CAPTION_DROPOUT` empty captions.

    Args:
        latents: the samples' scaled latents (from `train_vae`).

    Returns:
        (the UNet, its loss curve).
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(seed + 2)
    unet = world_unet(latents.shape[-1])
    schedule = DDPMScheduler(**sd_scheduler_kwargs(PREDICTION_TYPE))

    def loss_of_step(step: int, g: torch.Generator) -> torch.Tensor:
        idx = batch_indices(g, len(latents), batch_size)
        drop = torch.rand(len(idx), generator=g) < CAPTION_DROPOUT
        captions = ["" if d else samples.captions[int(i)] for i, d in zip(idx, drop, strict=True)]
        z = latents[idx]
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, TRAIN_TIMESTEPS, (len(idx),), generator=g)
        pred = unet(schedule.add_noise(z, noise, t), t, encode_text(tok, text_encoder, captions))
        return torch.nn.functional.mse_loss(pred.sample, schedule.get_velocity(z, noise, t))

    params = [*unet.parameters(), *text_encoder.parameters()]
    curve = train_steps(params, loss_of_step, steps, UNET_LR, seed, "unet", progress)
    return unet.eval(), curve


def sample_images(vae: Any, unet: Any, conditions: torch.Tensor, unconditional: torch.Tensor,
                  steps: int, guidance: float, seed: int) -> torch.Tensor:
    """DDIM samples [B, 3, S, S] in [-1, 1] for `conditions` (the zoo's own quality check).

    Args:
        vae: the autoencoder.
        unet: the denoiser.
        conditions: [B, L, D] conditions.
        unconditional: [B, L, D] empty-caption conditions.
        steps: DDIM steps.
        guidance: classifier-free guidance scale.
        seed: the noise seed.

    Returns:
        The decoded images.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**sd_scheduler_kwargs(PREDICTION_TYPE))
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(conditions), unet.config.in_channels, size, size, generator=g)
    both = torch.cat([unconditional, conditions])
    with torch.no_grad():
        for t in scheduler.timesteps:
            pred_u, pred_c = unet(torch.cat([x, x]), t, both).sample.chunk(2)
            x = scheduler.step(pred_u + guidance * (pred_c - pred_u), t, x).prev_sample
        return vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1)


def save_diffusion(out_dir: Path, vae: Any, text_encoder: Any, unet: Any) -> None:
    """Write the SD 2.1 layout (the tokenizer is already in `out_dir/tokenizer`)."""
    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    zoo.write_scheduler_and_index(out_dir, text_encoder=True, prediction_type=PREDICTION_TYPE)
