"""Trying a model: one prompt (and its images) -> an interleaved answer -> ``answer.md`` + PNGs.

Shared by ``pipelines/generate.py`` and the Ray Serve app (`dreamray.serving`); no Ray here.

- `AnswerOptions` / `resolve_mode`: what kind of answer. ``text`` (`generate_text`), ``image``
  (the prompt's dream queries -> images, as `generate_images`, with the prompt's images read
  through CLIP when it has any) or ``interleaved`` (`generate_interleaved`: the model decides
  when to draw). ``auto`` picks from the budgets: no image budget -> text, no token budget ->
  image, else interleaved.
- Inputs are checked before anything runs, each error naming its field (`AnswerError`,
  `dreamray.model.answer_inputs`: the model dir, images, the prompt against the context).
- `generate_answer` runs it (optionally with a progress bar over tokens and denoising steps);
  `write_answer` writes ``answer.md`` (the text, ``![image k](image_k.png)`` where each image
  was made) and the PNGs; `png_bytes` is the server's encoding.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from dreamray.files import atomic_write
from dreamray.model.answer_inputs import (
    AnswerError,
    check_context,
    context_size,
    place_images,
)

Mode = Literal["auto", "text", "image", "interleaved"]
MODES: tuple[str, ...] = ("auto", "text", "image", "interleaved")
SCHEDULERS = ("ddpm", "ddim")
ANSWER_FILE = "answer.md"
IMAGE_NAME = "image_{}.png"
_IMAGE_FILE = re.compile(r"image_\d+\.png")
DEFAULT_INTERLEAVED_IMAGES = 4  # generate_interleaved's bound
Segment = str | Image.Image


@dataclass(frozen=True)
class AnswerOptions:
    """How an answer is generated.

    Attributes:
        mode: ``auto`` | ``text`` | ``image`` | ``interleaved`` (see `resolve_mode`).
        max_new_tokens: token budget (text and interleaved).
        max_images: interleaved: the most images the model may draw (None: 4); image: how
            many images, seeds ``seed, seed + 1, ...`` (None: 1).
        seed: image k (from 0) uses ``seed + k``; token sampling uses ``seed``.
        steps: denoising steps per image.
        guidance: classifier-free guidance scale (1.0: no unconditional branch).
        scheduler: ``ddpm`` (the reference's) or ``ddim``.
        negative_prompt: the unconditional branch's prompt (None: the empty prompt).
        image_bias: added to ``<dream_start>``'s logit in interleaved answers (> 0: draw
            sooner; 1e4 draws at once, until ``max_images``).
        do_sample: sample tokens instead of greedy decoding.
        temperature: sampling temperature.
        top_k: sample from the k most likely tokens (None: all).
    """

    mode: Mode = "auto"
    max_new_tokens: int = 64
    max_images: int | None = None
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddpm"
    negative_prompt: str | None = None
    image_bias: float = 0.0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AnswerError("mode", f"one of {', '.join(MODES)}, got {self.mode!r}")
        if self.scheduler not in SCHEDULERS:
            raise AnswerError("scheduler", f"one of {', '.join(SCHEDULERS)}, got "
                                           f"{self.scheduler!r}")
        for name, low in (("max_new_tokens", 0), ("steps", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AnswerError(name, f"an integer >= {low}, got {value!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int)
                                            or self.max_images < 0):
            raise AnswerError("max_images", f"an integer >= 0, got {self.max_images!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise AnswerError("top_k", f"an integer >= 1, got {self.top_k!r}")
        for name in ("guidance", "image_bias", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise AnswerError(name, f"a finite number, got {value!r}")
        if self.temperature <= 0:
            raise AnswerError("temperature", f"> 0, got {self.temperature!r}")

    @property
    def resolved_mode(self) -> str:
        """`resolve_mode` of these options."""
        return resolve_mode(self)

    @property
    def num_images(self) -> int:
        """The image count (image mode) or bound (interleaved); 0 for text."""
        mode = self.resolved_mode
        if mode == "text":
            return 0
        if self.max_images is not None:
            return self.max_images
        return 1 if mode == "image" else DEFAULT_INTERLEAVED_IMAGES


def resolve_mode(options: AnswerOptions) -> str:
    """The answer kind: an explicit mode, or ``auto`` decided from the budgets.

    ``auto``: ``max_images == 0`` -> ``text``; ``max_new_tokens == 0`` -> ``image``; else
    ``interleaved``.

    Raises:
        AnswerError: a budget of 0 for the explicit mode that needs it.
    """
    mode, images, tokens = options.mode, options.max_images, options.max_new_tokens
    if mode == "auto":
        if images == 0 and tokens == 0:
            raise AnswerError("max_new_tokens", "0 tokens and 0 images: nothing to generate")
        if images == 0:
            return "text"
        return "image" if tokens == 0 else "interleaved"
    if mode in ("text", "interleaved") and tokens == 0:
        raise AnswerError("max_new_tokens", f"{mode} answers need at least 1 token")
    if mode == "image" and images == 0:
        raise AnswerError("max_images", "image answers need at least 1 image")
    return mode


@dataclass
class Answer:
    """A generated answer: segments in order (text and PIL images) and what made it."""

    prompt: str
    segments: list[Segment]
    mode: str
    options: AnswerOptions
    input_images: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[Image.Image]:
        """The generated images, in order."""
        return [s for s in self.segments if isinstance(s, Image.Image)]

    @property
    def text(self) -> str:
        """The text segments joined."""
        return "".join(s for s in self.segments if isinstance(s, str))


# -- generation -----------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over chosen tokens and denoising steps (UNet calls)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not enabled, unit="step", desc="generating",
                        file=sys.stderr, dynamic_ncols=True)

    def tick(self, *_: Any) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.total = self.bar.n  # stopped early (EOS, context): the bar ends full
        self.bar.close()


class _Tokens:
    """A logits processor that counts chosen tokens and biases ``<dream_start>``."""

    def __init__(self, progress: _Progress, token: int | None = None, bias: float = 0.0) -> None:
        self.progress, self.token, self.bias = progress, token, bias

    def __call__(self, input_ids, scores):
        self.progress.tick()
        if self.token is None or not self.bias:
            return scores
        scores = scores.clone()
        scores[:, self.token] += self.bias
        return scores


@contextmanager
def _progress(model: Any, total: int, enabled: bool) -> Iterator[_Progress]:
    progress = _Progress(total, enabled)
    hook = model.stable_diffusion_head.unet.register_forward_hook(progress.tick)
    try:
        yield progress
    finally:
        hook.remove()
        progress.close()


def generate_answer(
    model: Any,
    prompt: str,
    images: Sequence[Image.Image] = (),
    options: AnswerOptions = AnswerOptions(),
    *,
    progress: bool = False,
    image_names: Sequence[str] = (),
) -> Answer:
    """Answer one prompt.

    Args:
        model: a loaded DreamLLM (on its device).
        prompt: raw text (no chat template is applied); ``<image>`` placeholders take `images`
            in order (without placeholders, the images go in front, `place_images`).
        images: input images (PIL).
        options: the answer's kind and sampling options.
        progress: show a progress bar (stderr).
        image_names: the input images' names, recorded in the answer.

    Returns:
        The answer.

    Raises:
        AnswerError: a prompt that does not fit the context, images that do not fit the
            placeholders, options that do not fit the mode.
    """
    import torch

    from dreamray.model.generation import ImageOptions, generate_text
    from dreamray.model.interleaved import generate_interleaved

    mode = resolve_mode(options)
    full = place_images(prompt, len(images))
    used = check_context(model, full, options, len(images))
    image_options = ImageOptions(guidance_scale=options.guidance,
                                 num_inference_steps=options.steps,
                                 scheduler=options.scheduler,  # type: ignore[arg-type]
                                 negative_prompt=options.negative_prompt)
    n_images = options.num_images
    tokens = options.max_new_tokens
    limit = context_size(model)
    if mode == "text" and limit is not None:
        tokens = min(tokens, limit - used)  # HF generate would run past the context
    total = {"text": tokens, "image": options.steps,
             "interleaved": tokens + n_images * options.steps}[mode]
    with _progress(model, total, progress) as bar:
        if mode == "text":
            torch.manual_seed(options.seed)
            from transformers import LogitsProcessorList

            sampling: dict[str, Any] = {}
            if options.do_sample:
                sampling["temperature"] = options.temperature
                if options.top_k is not None:
                    sampling["top_k"] = options.top_k
            (text,) = generate_text(
                model, [full], [list(images)], max_new_tokens=tokens,
                do_sample=options.do_sample, logits_processor=LogitsProcessorList([_Tokens(bar)]),
                **sampling,
            )
            segments: list[Segment] = [text] if text else []
        elif mode == "image":
            segments = list(_images(model, full, list(images), image_options, options.seed,
                                    n_images))
        else:
            segments = generate_interleaved(
                model, full, list(images), max_new_tokens=tokens, max_images=n_images,
                image_options=image_options, do_sample=options.do_sample,
                temperature=options.temperature, top_k=options.top_k, seed=options.seed,
                logits_processor=_Tokens(bar, model.token_ids.dream_start, options.image_bias),
            )
    return Answer(prompt, segments, mode, options, list(image_names))


def _images(model: Any, prompt: str, images: list[Image.Image], image_options: Any, seed: int,
            count: int) -> list[Image.Image]:
    """Image answers: the prompt (its images through CLIP) -> dream queries -> `count` images,
    image k with seed ``seed + k``; without input images this is `generate_images`'s path."""
    from dreamray.model.generation import (
        DecodeState,
        encode_prompts,
        images_from_hidden,
        inference,
        unconditional_dream_hidden,
    )

    with inference(model):
        batch = encode_prompts(model, [prompt], [images])
        state = DecodeState(model)
        state.feed(model.embed(batch.input_ids, batch.clip_pixel_values), batch.attention_mask)
        _, hidden = state.feed(model.dream_block_embeds(1))
        hidden = hidden[:, 1:-1].expand(count, -1, -1)
        uncond = None
        if image_options.guidance_scale != 1.0:
            negative = image_options.negative_prompt
            uncond = unconditional_dream_hidden(model, None if negative is None else [negative])
        seeds = [seed + k for k in range(count)]
        return images_from_hidden(model, hidden, uncond, image_options, seeds)


# -- output ---------------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _quote(text: str) -> str:
    # `<image>` would read as an HTML tag in Markdown
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join(f"> {line}" if line else ">" for line in escaped.splitlines() or [""])


def answer_markdown(answer: Answer) -> str:
    """``answer.md``'s text: a header, the prompt quoted, then the segments in order, each
    image as ``![image k](image_k.png)``."""
    o = answer.options
    settings = f"mode={answer.mode} seed={o.seed}"
    if answer.mode != "text":
        settings += f" steps={o.steps} guidance={o.guidance} scheduler={o.scheduler}"
    lines = ["# Answer", "", f"<!-- dreamray answer: {settings} -->", "", _quote(answer.prompt)]
    if answer.input_images:
        lines += [">", "> input images: " + ", ".join(f"`{n}`" for n in answer.input_images)]
    lines.append("")
    k = 0
    for segment in answer.segments:
        if isinstance(segment, str):
            lines += [segment.strip("\n"), ""]
        else:
            k += 1
            lines += [f"![image {k}]({IMAGE_NAME.format(k)})", ""]
    if not answer.segments:
        lines += ["*(empty answer: the model ended at once)*", ""]
    return "\n".join(lines)


def write_answer(answer: Answer, out_dir: str | Path) -> Path:
    """Write ``answer.md`` and ``image_k.png`` (k from 1) into `out_dir`.

    PNGs of an earlier answer in the dir (``image_k.png`` names) are removed, so every PNG there
    is one that ``answer.md`` references.

    Returns:
        The path of ``answer.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for k, image in enumerate(answer.images, start=1):
        name = IMAGE_NAME.format(k)
        with atomic_write(out / name, "wb") as f:
            f.write(png_bytes(image))
        names.append(name)
    for stale in out.iterdir():
        if _IMAGE_FILE.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    with atomic_write(out / ANSWER_FILE) as f:
        f.write(answer_markdown(answer))
    return out / ANSWER_FILE
