"""Interleaved text + image generation (paper Fig. 3; the reference never released this loop).

The loop, on one KV cache (`dreamray.model.generation.DecodeState`):

1. feed the prompt (images in it go through CLIP once);
2. choose the next token (greedy, or sampled from a seeded generator);
3. text token: feed it and go on; ``</s>``: stop;
4. ``<dream_start>``: feed it with the Q dream queries and ``<dream_end>`` (never sampled), read
   the Q hidden states, generate an image from them with CFG (unconditional branch: the empty
   prompt's queries, or the negative prompt's), then feed the image back as an IMG block through
   the CLIP image processor and tower (DRM + IMG, the training layout), and go on.

Stops at ``</s>``, after `max_new_tokens` chosen tokens (``<dream_start>`` counts; the fed blocks
do not), or when the LLM's context (``max_position_embeddings``) is full. The image bound: once
`max_images` images exist, ``<dream_start>`` is masked out of the logits, so text continues (it is
masked the same way when a DRM + IMG block no longer fits in the context). Tokens the model never
learns to emit (``<im_patch> <im_start> <im_end> <dream_end> <image> <dream>`` and pad) are
always masked, so the stream cannot hold a malformed block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from dreamray.model.dreamllm import DreamLLM
from dreamray.model.generation import (
    DecodeState,
    ImageOptions,
    LogitsProcessor,
    Segment,
    clip_pixels,
    encode_prompts,
    images_from_hidden,
    inference,
    model_device,
    unconditional_dream_hidden,
)


def generate_interleaved(
    model: DreamLLM,
    prompt: str,
    images: Sequence[Image.Image] | None = None,
    *,
    max_new_tokens: int = 256,
    max_images: int = 4,
    image_options: ImageOptions = ImageOptions(),
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    logits_processor: LogitsProcessor | None = None,
) -> list[Segment]:
    """Generate a document of text and images from a prompt.

    Args:
        model: the DreamLLM (on its device).
        prompt: raw prompt (apply a chat template first if the model expects one); ``<image>``
            placeholders take `images`.
        images: the prompt's images, in order.
        max_new_tokens: bound on chosen tokens.
        max_images: bound on generated images; then ``<dream_start>`` is masked.
        image_options: guidance, steps, scheduler and negative prompt of every image.
        do_sample: sample tokens (else greedy).
        temperature: sampling temperature.
        top_k: keep only the k most likely tokens when sampling (None: all).
        seed: token sampling seed; image k (from 0) uses ``seed + k``.
        logits_processor: ``f(input_ids [1, n], scores [1, V]) -> scores`` applied before the
            masks (the HF ``LogitsProcessor`` signature; e.g. to bias ``<dream_start>``).

    Returns:
        Segments in order: text strings (special tokens dropped) and PIL images.

    Raises:
        ValueError: when the prompt's image blocks and `images` differ in number.
    """
    sampling = (do_sample, temperature, top_k)
    run = _Interleaver(model, max_images, image_options, sampling, seed, logits_processor)
    with inference(model):
        return run.generate(prompt, images, max_new_tokens)


class _Interleaver:
    """The state of one interleaved generation."""

    def __init__(self, model, max_images, image_options, sampling, seed, logits_processor):
        self.model = model
        self.max_images = max_images
        self.image_options = image_options
        self.sampling: tuple[bool, float, int | None] = sampling
        self.seed = seed
        self.logits_processor = logits_processor
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.state = DecodeState(model)
        self.ids: list[int] = []  # everything in the cache, for logits processors
        self.text: list[int] = []  # tokens of the text segment being written
        self.segments: list[Segment] = []
        self.num_images = 0
        t = model.token_ids
        self.never = [t.im_patch, t.im_start, t.im_end, t.dream_end, t.image, t.dream, t.pad]
        self.block_len = model.num_queries + 2 + model.num_patches + 2
        self.max_len = getattr(model.llm.config, "max_position_embeddings", None)

    def generate(self, prompt, images, max_new_tokens: int) -> list[Segment]:
        batch = encode_prompts(self.model, [prompt], [list(images or [])])
        embeds = self.model.embed(batch.input_ids, batch.clip_pixel_values)
        logits, _ = self.state.feed(embeds)
        self.ids += batch.input_ids[0].tolist()
        eos, dream_start = self.model.token_ids.eos, self.model.token_ids.dream_start
        for _ in range(max_new_tokens):
            if not self._fits(1):
                break
            token = self._choose(logits)
            if token == eos:
                break
            if token == dream_start:
                logits = self._dream()
            else:
                self.text.append(token)
                logits = self._feed_ids([token])
        self._flush_text()
        return self.segments

    def _fits(self, extra: int) -> bool:
        return self.max_len is None or self.state.length + extra <= self.max_len

    def _choose(self, logits: torch.Tensor) -> int:
        scores = logits.float()
        if self.logits_processor is not None:
            history = torch.tensor([self.ids], device=scores.device)
            scores = self.logits_processor(history, scores)
        banned = list(self.never)
        if self.num_images >= self.max_images or not self._fits(self.block_len):
            banned.append(self.model.token_ids.dream_start)
        scores[:, banned] = float("-inf")
        do_sample, temperature, top_k = self.sampling
        if not do_sample:
            return int(scores.argmax(dim=-1))
        scores = scores / temperature
        if top_k is not None:
            kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _feed_ids(self, ids: list[int], pixels: torch.Tensor | None = None) -> torch.Tensor:
        input_ids = torch.tensor([ids], device=model_device(self.model))
        logits, _ = self.state.feed(self.model.embed(input_ids, pixels))
        self.ids += ids
        return logits

    def _dream(self) -> torch.Tensor:
        """Queries -> image -> IMG block; returns the logits after the IMG block."""
        model, t = self.model, self.model.token_ids
        self._flush_text()
        _, hidden = self.state.feed(model.dream_block_embeds(1))
        self.ids += t.dream_block(model.num_queries)
        image = self._image(hidden[:, 1:-1])
        self.segments.append(image)
        self.num_images += 1
        return self._feed_ids(t.image_block(model.num_patches), clip_pixels(model, [image]))

    def _image(self, hidden: torch.Tensor) -> Image.Image:
        options = self.image_options
        uncond = None
        if options.guidance_scale != 1.0:
            negative = None if options.negative_prompt is None else [options.negative_prompt]
            uncond = unconditional_dream_hidden(self.model, negative)
        seed = self.seed + self.num_images
        return images_from_hidden(self.model, hidden, uncond, options, seed)[0]

    def _flush_text(self) -> None:
        if self.text:
            text = self.model.tokenizer.decode(self.text, skip_special_tokens=True)
            if text:
                self.segments.append(text)
        self.text = []
