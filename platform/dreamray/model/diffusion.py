"""The diffusion head: frozen SD VAE + UNet, the DDPM schedule, and the trained condition projector.

State-dict keys are the reference's ``stable_diffusion_head.bin`` keys: ``vae.*``, ``unet.*``,
``projector.projector.weight`` (no bias). The scheduler holds no weights: it is rebuilt from its
config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dreamray.model.plugins import Projector


def vae_latent_moments(vae: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's parameters of images in [-1, 1]: the head's encoder half (and what a
    precompute stage runs, `dreamray.data.feature_compute`).

    Args:
        vae: a diffusers ``AutoencoderKL``.
        pixel_values: ``[N, 3, R, R]``.

    Returns:
        ``[N, 2 * latent channels, h, w]``: mean, then log-variance, in the VAE's dtype.
    """
    vae_dtype = next(vae.parameters()).dtype
    return vae.encode(pixel_values.to(vae_dtype)).latent_dist.parameters


class StableDiffusionHead(nn.Module):
    """Condition projector -> UNet epsilon (or v) prediction on VAE latents."""

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler, projector: Projector) -> None:
        """Assemble the head.

        Args:
            vae: a diffusers ``AutoencoderKL``.
            unet: a diffusers ``UNet2DConditionModel``.
            scheduler: a diffusers ``DDPMScheduler`` (the training noise schedule).
            projector: LLM hidden size -> ``unet.config.cross_attention_dim``, bias-free.
        """
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.projector = projector
        self.scheduler = scheduler

    @property
    def resolution(self) -> int:
        """Pixel side R of the SD images: UNet latent size x VAE downsampling factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * factor

    @property
    def num_train_timesteps(self) -> int:
        """T of the DDPM schedule (1000 for SD)."""
        return int(self.scheduler.config.num_train_timesteps)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states at the dream positions ``[N, Q, D]`` -> UNet condition ``[N, Q, C]``."""
        return self.projector(hidden)

    @torch.no_grad()
    def latent_moments(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[N, 3, R, R]`` -> the VAE posterior's parameters
        ``[N, 2 * latent channels, h, w]`` (mean, then log-variance): what a precompute stage
        stores, so that the latent is still drawn anew at every step."""
        return vae_latent_moments(self.vae, pixel_values)

    def sample_latents(self, moments: torch.Tensor) -> torch.Tensor:
        """Posterior parameters (`latent_moments`) -> scaled latents, a fresh sample (torch's
        global RNG, as the VAE's own posterior draws it)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae_dtype = next(self.vae.parameters()).dtype
        dist = DiagonalGaussianDistribution(moments.to(vae_dtype))
        # contiguous: the VAE may hand back channels-last moments, and `randn_like` on latents
        # of another layout would draw the same numbers into other elements (precomputed
        # moments are stored contiguous)
        return (dist.sample() * self.vae.config.scaling_factor).contiguous()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[N, 3, R, R]`` -> scaled latents (a sample of the posterior)."""
        return self.sample_latents(self.latent_moments(pixel_values))

    @property
    def moments_shape(self) -> tuple[int, int, int]:
        """``(2 * latent channels, h, w)``: one image's `latent_moments`."""
        side = int(self.unet.config.sample_size)
        return 2 * int(self.vae.config.latent_channels), side, side

    def denoise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """One UNet prediction (what generation calls in its sampling loop).

        Args:
            noisy: latents ``[N, 4, h, w]``.
            timesteps: ``[N]`` integer timesteps (or a scalar).
            condition: projected condition ``[N, Q, C]``.

        Returns:
            The UNet output (epsilon or v, per the scheduler's prediction type), ``[N, 4, h, w]``.
        """
        unet_dtype = next(self.unet.parameters()).dtype
        out = self.unet(
            noisy.to(unet_dtype), timesteps, encoder_hidden_states=condition.to(unet_dtype)
        )
        return out.sample

    def per_image_loss(
        self,
        hidden: torch.Tensor,
        pixel_values: torch.Tensor | None,
        snr_gamma: float | None,
        moments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising loss of each diffusion target (the loop decides how they are averaged).

        Args:
            hidden: LLM hidden states at the dream positions, ``[N, Q, D]``.
            pixel_values: the target images in [-1, 1], ``[N, 3, R, R]``; None with `moments`.
            snr_gamma: min-SNR-gamma weighting; None for the plain MSE (the reference default).
            moments: the targets' precomputed `latent_moments` instead of pixels (the VAE
                encoder does not run; the latent is sampled from them the same way).

        Returns:
            ``[N]``: MSE(pred, target) per image (times its min-SNR weight when that is on).
        """
        if moments is None:
            moments = self.latent_moments(pixel_values)
        latents = self.sample_latents(moments).float()
        noise, steps = self.draw_noise(latents)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        target = self._target(latents, noise, steps)
        pred = self.denoise(noisy, steps, self.project(hidden))
        per_image = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))
        if snr_gamma is not None:
            per_image = per_image * self._min_snr_weights(steps, snr_gamma)
        return per_image

    def draw_noise(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training noise and timesteps of a batch of latents (torch's global RNG).

        Args:
            latents: ``[N, 4, h, w]``.

        Returns:
            ``(noise like latents, integer timesteps [N])``.
        """
        noise = torch.randn_like(latents)
        steps = torch.randint(
            0, self.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        return noise, steps

    def _target(self, latents, noise, steps) -> torch.Tensor:
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, steps)
        raise ValueError(f"unsupported scheduler prediction_type {kind!r}")

    def _min_snr_weights(self, steps: torch.Tensor, gamma: float) -> torch.Tensor:
        # Hang et al. 2023: weight = min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v
        alphas = self.scheduler.alphas_cumprod.to(steps.device)[steps].float()
        snr = alphas / (1.0 - alphas)
        clipped = torch.clamp(snr, max=gamma)
        if self.scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped / snr

    def dummy_input(self, device: torch.device) -> torch.Tensor:
        """One zero SD-sized image, for the zero-weighted pass of a batch without targets."""
        return torch.zeros(1, 3, self.resolution, self.resolution, device=device)

    def dummy_moments(self, device: torch.device) -> torch.Tensor:
        """Zero posterior parameters of one image: the zero-weighted pass on precomputed
        latents."""
        return torch.zeros(1, *self.moments_shape, device=device)
