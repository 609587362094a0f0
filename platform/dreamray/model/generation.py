"""Generation with a DreamLLM: text, text-to-image and interleaved text + images.

Pure torch (no Ray, no DeepSpeed): usable in a Ray actor that holds the model on its device.
Every function switches the model to eval mode under ``torch.no_grad`` and restores its mode.

- `generate_text`: prompts with images -> text. CLIP features enter once, through
  ``inputs_embeds``; HF ``generate`` then decodes with its KV cache (greedy, sampling, beams).
- `generate_images`: prompt -> KV cache -> ``<dream_start>`` + Q queries + ``<dream_end>`` ->
  the Q normed hidden states -> condition -> CFG sampling (DDPM as in the reference's eval, or
  DDIM) -> VAE -> PIL. The unconditional branch is the empty prompt's (just ``<s>``) queries, or
  the negative prompt's, as in the reference.
- `generate_interleaved` (the reference never released it): decode text; a sampled
  ``<dream_start>`` is followed by the queries and ``<dream_end>``, an image is generated from
  their condition and fed back as an IMG block through CLIP (DRM + IMG, the training layout);
  decoding then continues.

Prompts are raw text (no chat template: callers apply theirs); BOS is prepended; each ``<image>``
placeholder becomes an IMG block, and IMG blocks already spelled out in the text are kept. Batches
are left-padded, with position ids counted from the attention mask, so that a prompt's result
does not depend on the batch it is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from PIL import Image

from dreamray.model.dreamllm import DreamLLM
from dreamray.model.sampling import (
    SchedulerKind,
    decode_latents,
    denoise_latents,
    make_generators,
    make_scheduler,
    to_pil,
)
from dreamray.model.tokens import IMAGE, adds_word_boundary

Segment = str | Image.Image
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ImageOptions:
    """How images are sampled (defaults: the reference's ``stable_diffusion_pipeline``)."""

    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    scheduler: SchedulerKind = "ddpm"
    negative_prompt: str | None = None
    eta: float = 0.0  # DDIM only


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts in the model's batch contract."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    clip_pixel_values: torch.Tensor | None


@contextmanager
def inference(model: DreamLLM) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: DreamLLM) -> torch.device:
    """The device of the LLM's input embeddings (where the inputs must go)."""
    return model.llm.get_input_embeddings().weight.device


def prompt_ids(model: DreamLLM, prompt: str) -> list[int]:
    """``<s>`` + the prompt's tokens, each ``<image>`` replaced by an IMG block.

    Args:
        model: the model (tokenizer and block sizes).
        prompt: raw text; special tokens in it (e.g. a spelled-out IMG block) are kept.

    Returns:
        Token ids.
    """
    tok, ids = model.tokenizer, model.token_ids
    out = [ids.bos]
    for i, piece in enumerate(prompt.split(IMAGE)):
        if i:
            out += ids.image_block(model.num_patches)
            if piece.startswith(" ") and adds_word_boundary(tok):
                # SentencePiece opens every run with a `▁` of its own: the space after the
                # block is that boundary (as the sequence builder encodes training text), not
                # a second `▁` before the word
                piece = piece[1:]
        if piece:
            out += tok(piece, add_special_tokens=False).input_ids
    return out


@lru_cache(maxsize=4)
def _processor(config_json: str):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_dict(json.loads(config_json))


def clip_pixels(model: DreamLLM, images: Sequence[Image.Image]) -> torch.Tensor | None:
    """The vision tower's inputs: the CLIP image processor saved with the model.

    Args:
        model: the model; its config holds the processor (the vision dir's, or the artifact's
            ``preprocessor_config.json``).
        images: PIL images in block order.

    Returns:
        ``[N, 3, H, W]`` on the model's device, or None for no images.
    """
    if not images:
        return None
    processor = _processor(json.dumps(model.dreamllm_config.image_processor, sort_keys=True))
    rgb = [image.convert("RGB") for image in images]
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
    return pixels.to(model_device(model))


def encode_prompts(
    model: DreamLLM,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]] | None = None,
) -> PromptBatch:
    """Tokenise, expand ``<image>``, left-pad, and preprocess the images.

    Args:
        model: the model.
        prompts: raw prompts.
        images: per prompt, its images in order (one per IMG block); None for none at all.

    Returns:
        The batch on the model's device.

    Raises:
        ValueError: when a prompt's IMG blocks and its images differ in number.
    """
    rows = [prompt_ids(model, p) for p in prompts]
    per_prompt = [list(x) for x in images] if images is not None else [[] for _ in prompts]
    if len(per_prompt) != len(rows):
        raise ValueError(f"{len(per_prompt)} image lists for {len(rows)} prompts")
    for i, (row, imgs) in enumerate(zip(rows, per_prompt, strict=True)):
        blocks = row.count(model.token_ids.im_start)
        if blocks != len(imgs):
            raise ValueError(f"prompt {i} has {blocks} image blocks but {len(imgs)} images")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), model.token_ids.pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    device = model_device(model)
    pixels = clip_pixels(model, [img for imgs in per_prompt for img in imgs])
    return PromptBatch(input_ids.to(device), mask.to(device), pixels)


def generate_text(
    model: DreamLLM,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]] | None = None,
    *,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    do_sample: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Answer prompts that may hold images, with HF ``generate`` on ``inputs_embeds``.

    CLIP runs once, in the prompt's embeddings; the decode steps reuse the KV cache. Special
    tokens are dropped from the output, and ``<dream_start>`` is not acted on (see
    `generate_interleaved` for that).

    Args:
        model: the DreamLLM (on its device).
        prompts: raw prompts (see the module docstring).
        images: per prompt, its images; None when no prompt has any.
        max_new_tokens: decode budget per prompt.
        num_beams: beam search width (the reference's VQA uses 5).
        do_sample: sample instead of greedy/beam search.
        **generate_kwargs: passed to ``model.llm.generate`` (e.g. ``temperature``,
            ``logits_processor``, ``length_penalty``).

    Returns:
        One decoded string per prompt (the new tokens only).

    Raises:
        ValueError: on an image count that does not match a prompt's blocks.
    """
    with inference(model):
        batch = encode_prompts(model, prompts, images)
        embeds = model.embed(batch.input_ids, batch.clip_pixel_values)
        out = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            eos_token_id=model.token_ids.eos,
            pad_token_id=model.token_ids.pad,
            **generate_kwargs,
        )
    # with inputs_embeds and no input_ids, a decoder-only generate returns only new tokens
    return model.tokenizer.batch_decode(out, skip_special_tokens=True)


class DecodeState:
    """An LLM KV cache that embeddings are fed into, chunk by chunk (left padding aware)."""

    def __init__(self, model: DreamLLM) -> None:
        """Start empty.

        Args:
            model: the DreamLLM whose LLM is run.
        """
        self.model = model
        self.cache: Any = None
        self.mask: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Positions held in the cache (padding included)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def feed(
        self, embeds: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the LLM on new embeddings on top of the cache.

        Args:
            embeds: ``[B, L, D]``.
            mask: ``[B, L]`` (0 = left padding); None for all ones.

        Returns:
            ``(next_logits [B, V], hidden [B, L, D])``: the logits after the last position and
            the final-norm hidden states of the new positions.
        """
        new = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        new = new if mask is None else mask
        full = new if self.mask is None else torch.cat([self.mask, new], dim=1)
        # positions count real tokens only, so a left-padded row matches its unpadded self
        positions = (full.cumsum(dim=1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        out, hidden = self.model.run_llm(
            embeds,
            full,
            cache=self.cache,  # transformers 5's name (was past_key_values)
            use_cache=True,
            position_ids=positions,
            logits_to_keep=1,
        )
        self.cache, self.mask = out.cache, full
        return out.logits[:, -1], hidden


def prompt_dream_hidden(model: DreamLLM, prompts: Sequence[str]) -> torch.Tensor:
    """The dream hidden states of prompts: prompt -> KV cache -> DRM block -> Q outputs.

    Args:
        model: the DreamLLM.
        prompts: raw prompts (``""`` is the reference's unconditional prompt, just ``<s>``).

    Returns:
        ``[B, Q, D]`` final-norm hidden states at the query positions.
    """
    batch = encode_prompts(model, prompts)
    state = DecodeState(model)
    state.feed(model.embed(batch.input_ids, batch.clip_pixel_values), batch.attention_mask)
    _, hidden = state.feed(model.dream_block_embeds(len(prompts)))
    return hidden[:, 1:-1]


def images_from_hidden(
    model: DreamLLM,
    hidden: torch.Tensor,
    uncond_hidden: torch.Tensor | None,
    options: ImageOptions,
    seed: int | Sequence[int],
) -> list[Image.Image]:
    """Dream hidden states -> images (projector, CFG sampling, VAE).

    Args:
        model: the DreamLLM.
        hidden: ``[B, Q, D]`` query outputs.
        uncond_hidden: ``[B or 1, Q, D]`` of the unconditional branch; None: no CFG.
        options: guidance, steps, scheduler (its ``negative_prompt`` is not read here).
        seed: one seed for the batch, or one per image.

    Returns:
        ``B`` RGB images at the head's resolution.
    """
    head = model.stable_diffusion_head
    batch = hidden.shape[0]
    cond = model.condition(hidden)
    uncond = None
    if uncond_hidden is not None and options.guidance_scale != 1.0:
        uncond = model.condition(uncond_hidden).expand(batch, -1, -1)
    latents = denoise_latents(
        head,
        cond,
        uncond,
        options.guidance_scale,
        make_scheduler(head, options.scheduler),
        options.num_inference_steps,
        make_generators(seed, batch),
        eta=options.eta,
    )
    return to_pil(decode_latents(head, latents))


def unconditional_dream_hidden(model: DreamLLM, negative: Sequence[str] | None) -> torch.Tensor:
    """The CFG branch: the empty prompt's queries, or each negative prompt's."""
    if negative is None:
        return model.unconditional_hidden()
    return prompt_dream_hidden(model, negative)


def generate_images(
    model: DreamLLM,
    prompts: Sequence[str],
    *,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    scheduler: SchedulerKind = "ddpm",
    seed: int | Sequence[int] = 0,
    negative_prompt: str | Sequence[str] | None = None,
    eta: float = 0.0,
) -> list[Image.Image]:
    """Text-to-image, as the reference's ``stable_diffusion_pipeline`` (raw prompt, no template).

    Args:
        model: the DreamLLM (on its device).
        prompts: one image per prompt (batched, left-padded).
        guidance_scale: CFG weight; 1.0 skips the unconditional branch (the same result).
        num_inference_steps: denoising steps (the reference's FID eval: DDPM, 150 steps, 2.0).
        scheduler: ``"ddpm"`` (the reference's sampler) or ``"ddim"``.
        seed: one seed for the batch, or one per prompt (then an image does not depend on the
            other prompts of its batch). Same seed, same pixels.
        negative_prompt: the unconditional branch's prompt (one, or one per prompt); None is
            the empty prompt.
        eta: DDIM's eta.

    Returns:
        RGB images at the head's resolution (SD 2.1-base: 512 px).

    Raises:
        ValueError: on an unknown scheduler or mismatched seed / negative prompt counts.
    """
    options = ImageOptions(guidance_scale, num_inference_steps, scheduler, None, eta)
    negatives = _negatives(negative_prompt, len(prompts))
    with inference(model):
        hidden = prompt_dream_hidden(model, prompts)
        uncond = None
        if guidance_scale != 1.0:
            uncond = unconditional_dream_hidden(model, negatives)
        return images_from_hidden(model, hidden, uncond, options, seed)


def _negatives(negative: str | Sequence[str] | None, batch: int) -> list[str] | None:
    if negative is None:
        return None
    if isinstance(negative, str):
        return [negative] * batch
    if len(negative) != batch:
        raise ValueError(f"{len(negative)} negative prompts for {batch} prompts")
    return list(negative)
