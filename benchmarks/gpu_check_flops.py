"""The FLOPs that `gpu_check.py`'s MFU is computed from, and the peaks it is divided by.

Per optimizer step of stage II (`stage2_step_flops`): the LLM's training FLOPs written out
(`llm_train_flops_per_token`: ``6 N + 12 n_layers L d_attn`` per token), the trained projectors'
``6 x weights x uses``, and each frozen tower's forward FLOPs per image, counted once by torch's
`FlopCounterMode` (`tower_forward_flops`): CLIP and the VAE encoder forward only, the UNet twice
(`UNET_PASSES_PER_TRAIN_STEP`). Recomputation is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets. Looked up
# by substring of `torch.cuda.get_device_name()`, first match wins (so "H100 PCIe" and
# "H100 NVL" come before the plain "H100", which is the SXM part).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)

# The frozen UNet runs forward and then a backward that carries the diffusion loss's gradient to
# the condition (activation gradients only, no weight gradients): about one more forward's worth.
UNET_PASSES_PER_TRAIN_STEP = 2


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU, from `PEAK_BF16_TFLOPS`.

    Args:
        device_name: what ``torch.cuda.get_device_name()`` reports.

    Returns:
        TFLOP/s, or None for a device the table does not know (CPUs included).
    """
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def llm_matmul_params(config: Any) -> int:
    """Weights of the LLM that multiply activations: every decoder layer's attention and MLP
    projections plus the LM head (the input embedding is a lookup, not a matmul).

    Args:
        config: a Llama-family config.

    Returns:
        The count N of ``6 N`` (norm weights and biases left out).
    """
    d, heads = int(config.hidden_size), int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    kv_heads = int(config.num_key_value_heads or heads)
    q_and_o = 2 * d * heads * head_dim
    k_and_v = 2 * d * kv_heads * head_dim
    mlp = 3 * d * int(config.intermediate_size)  # gate, up, down
    return int(config.num_hidden_layers) * (q_and_o + k_and_v + mlp) + d * int(config.vocab_size)


def llm_train_flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token of the LLM: ``6 N + 12 n_layers L d_attn``.

    ``6 N``: forward 2 N, backward 4 N (activation and weight gradients) over the matmul
    weights (`llm_matmul_params`). ``12 n_layers L d_attn``: per layer the forward's ``QK^T``
    and ``AV`` cost ``2 L d_attn`` each per token, times 3 for training; the full L x L score
    matrix is counted (the PaLM / Megatron convention), not the causal half that flash
    kernels compute. ``d_attn = heads x head_dim``.

    Args:
        config: a Llama-family config.
        seq_len: the row length L.

    Returns:
        FLOPs per token.
    """
    d, heads = int(config.hidden_size), int(config.num_attention_heads)
    d_attn = heads * int(getattr(config, "head_dim", None) or d // heads)
    return 6.0 * llm_matmul_params(config) + 12.0 * config.num_hidden_layers * seq_len * d_attn


@dataclass(frozen=True)
class TowerFlops:
    """Forward FLOPs of one image through each frozen tower, as torch's counter sees them."""

    clip: float
    vae_encoder: float
    unet: float


def count_forward_flops(run) -> float:
    """FLOPs of `run()` (matmuls, convolutions, attention) by torch's `FlopCounterMode`.

    Attention runs through SDPA's math backend while counting: its bmm's are counted on every
    device, where the fused CPU kernel would not be.

    Args:
        run: a no-argument callable doing one forward.

    Returns:
        The FLOP count.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        run()
    return float(counter.get_total_flops())


def tower_forward_flops(model) -> TowerFlops:
    """Count one image through CLIP (all hidden states), the VAE encoder and the UNet.

    Args:
        model: the DreamLLM, towers on their device.

    Returns:
        Per-image forward FLOPs of each frozen tower.
    """
    vision, head = model.clip_vision_embedding, model.stable_diffusion_head
    clip = vision.clip_vision_model
    param = next(clip.parameters())
    side, res = vision.image_size, head.resolution
    pixels = torch.zeros(1, 3, side, side, device=param.device, dtype=param.dtype)
    sd_pixels = torch.zeros(1, 3, res, res, device=param.device)
    unet, unet_param = head.unet.config, next(head.unet.parameters())
    latents = torch.zeros(1, unet.in_channels, unet.sample_size, unet.sample_size,
                          device=unet_param.device)
    cond = torch.zeros(1, model.num_queries, unet.cross_attention_dim,
                       device=unet_param.device)
    steps = torch.zeros(1, dtype=torch.long, device=unet_param.device)
    return TowerFlops(
        clip=count_forward_flops(lambda: clip(pixels, output_hidden_states=True)),
        vae_encoder=count_forward_flops(lambda: head.encode(sd_pixels)),
        unet=count_forward_flops(lambda: head.denoise(latents, steps, cond)),
    )


@dataclass(frozen=True)
class StepFlops:
    """Model FLOPs of one training step, by part (recomputation is never counted)."""

    llm: float
    projectors: float
    clip: float
    vae_encoder: float
    unet: float
    tokens: int

    @property
    def total(self) -> float:
        """All parts."""
        return self.llm + self.projectors + self.clip + self.vae_encoder + self.unet

    @property
    def per_token(self) -> float:
        """`total` over the step's tokens."""
        return self.total / self.tokens


def stage2_step_flops(model, config: Any, batch: dict, micro_batches: int,
                      towers: TowerFlops) -> StepFlops:
    """The model FLOPs of one optimizer step of `micro_batches` copies of `batch`.

    ``LLM: tokens x llm_train_flops_per_token`` (trained: forward + backward);
    ``projectors: 6 x (CLIP patches x clip_dim x d + dream queries x d x cross_dim)`` (trained);
    ``CLIP: images x forward``, ``VAE encoder: dream images x forward`` (frozen, no gradient);
    ``UNet: dream images x forward x UNET_PASSES_PER_TRAIN_STEP`` (frozen, but the loss's
    gradient flows back through it to the condition).

    Args:
        model: the DreamLLM (block sizes, widths).
        config: the LLM's config.
        batch: one micro-batch (`make_stage2_batch`).
        micro_batches: micro-batches per optimizer step.
        towers: per-image tower FLOPs (`tower_forward_flops`).

    Returns:
        The step's FLOPs by part.
    """
    rows, seq_len = batch["input_ids"].shape
    images = int(batch["clip_pixel_values"].shape[0]) * micro_batches
    dreams = int(batch["sd_pixel_values"].shape[0]) * micro_batches
    tokens = rows * seq_len * micro_batches
    d = int(config.hidden_size)
    clip_dim = int(model.clip_vision_embedding.clip_vision_model.config.hidden_size)
    cross = int(model.stable_diffusion_head.unet.config.cross_attention_dim)
    projectors = 6.0 * (images * model.num_patches * clip_dim * d
                        + dreams * model.num_queries * d * cross)
    return StepFlops(
        llm=tokens * llm_train_flops_per_token(config, seq_len),
        projectors=projectors,
        clip=images * towers.clip,
        vae_encoder=dreams * towers.vae_encoder,
        unet=dreams * towers.unet * UNET_PASSES_PER_TRAIN_STEP,
        tokens=tokens,
    )
