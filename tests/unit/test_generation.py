"""Generation: text with images (KV cache, left padding), text-to-image (seeds, CFG, samplers),
interleaved text + images. Tiny zoo model, few steps, one thread (model_fixtures sets it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import built_model
from PIL import Image

from dreamray.model import generation as gen
from dreamray.model.interleaved import generate_interleaved

STEPS = 3  # denoising steps: the code path is the same as 150


@pytest.fixture(scope="module")
def model(tiny_zoo):
    return built_model(tiny_zoo)


def _image(seed: int, size=(40, 52)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def _greedy_without_cache(model, prompt: str, images, steps: int) -> str:
    """The reference decode: the whole sequence (CLIP included) re-run for every new token."""
    batch = gen.encode_prompts(model, [prompt], [images])
    ids, new = batch.input_ids, []
    with torch.no_grad():
        for _ in range(steps):
            embeds = model.embed(ids, batch.clip_pixel_values)
            out, _ = model.run_llm(embeds, torch.ones_like(ids))
            token = int(out.logits[0, -1].argmax())
            if token == model.token_ids.eos:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return model.tokenizer.decode(new, skip_special_tokens=True)


def _length(llm_kwargs: dict) -> int:
    embeds = llm_kwargs["inputs_embeds"]
    return int(embeds.shape[1] if embeds is not None else llm_kwargs["input_ids"].shape[1])


def test_text_with_an_image_decodes_on_the_cache_like_a_full_recompute(model):
    clip_calls, llm_lengths = [], []
    tower = model.clip_vision_embedding.clip_vision_model
    hooks = [
        tower.register_forward_hook(lambda *_: clip_calls.append(1)),
        model.llm.model.register_forward_pre_hook(
            lambda m, a, kw: llm_lengths.append(_length(kw)), with_kwargs=True
        ),
    ]
    prompt = "look <image> and say"
    try:
        (text,) = gen.generate_text(model, [prompt], [[_image(0)]], max_new_tokens=5)
    finally:
        for h in hooks:
            h.remove()
    assert len(clip_calls) == 1  # features enter once, through the prompt's embeddings
    assert llm_lengths[0] > model.num_patches and set(llm_lengths[1:]) == {1}  # KV cache
    assert text == _greedy_without_cache(model, prompt, [_image(0)], 5)
    assert model.training  # the caller's mode comes back


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = ["look <image> and say what you see", "hi", "two <image> <image>"]
    images = [[_image(1)], [], [_image(2), _image(3)]]
    batched = gen.generate_text(model, prompts, images, max_new_tokens=4)
    alone = [
        gen.generate_text(model, [p], [i], max_new_tokens=4)[0]
        for p, i in zip(prompts, images, strict=True)
    ]
    assert batched == alone
    beams = gen.generate_text(model, prompts, images, max_new_tokens=3, num_beams=3)
    assert len(beams) == 3 and all(isinstance(b, str) for b in beams)


def test_spelled_out_image_blocks_and_image_count_errors(model):
    block = "<im_start>" + "<im_patch>" * model.num_patches + "<im_end>"
    assert gen.prompt_ids(model, f"a {block} b") == gen.prompt_ids(model, "a <image> b")
    with pytest.raises(ValueError, match="1 image blocks but 0 images"):
        gen.generate_text(model, ["a <image>"], [[]], max_new_tokens=1)


def test_prompt_condition_on_the_cache_equals_the_training_forward(model):
    t = model.token_ids
    ids = gen.prompt_ids(model, "a red dog") + t.dream_block(model.num_queries)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        _, hidden = model.run_llm(model.embed(input_ids, None), torch.ones_like(input_ids))
        want = model.dream_hidden(hidden, model.dream_blocks(input_ids))
        got = gen.prompt_dream_hidden(model, ["a red dog", "an even longer prompt here"])
        empty = gen.prompt_dream_hidden(model, [""])
        uncond = model.unconditional_hidden()
    torch.testing.assert_close(got[:1], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(empty, uncond, rtol=1e-4, atol=1e-5)


def test_images_same_seed_same_pixels_other_seed_differs(model):
    kwargs = dict(guidance_scale=2.0, num_inference_steps=STEPS)
    a = gen.generate_images(model, ["a cat", "a red dog"], seed=7, **kwargs)
    b = gen.generate_images(model, ["a cat", "a red dog"], seed=7, **kwargs)
    c = gen.generate_images(model, ["a cat", "a red dog"], seed=8, **kwargs)
    res = model.stable_diffusion_head.resolution
    assert all(im.size == (res, res) and im.mode == "RGB" for im in a)
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_per_prompt_seeds_make_an_image_independent_of_its_batch(model):
    kwargs = dict(guidance_scale=2.0, num_inference_steps=STEPS)
    batch = gen.generate_images(model, ["a cat", "a red dog on a beach"], seed=[3, 4], **kwargs)
    alone = gen.generate_images(model, ["a red dog on a beach"], seed=[4], **kwargs)
    diff = np.abs(_pixels(batch[1:]).astype(int) - _pixels(alone).astype(int)).max()
    assert diff <= 1  # left padding: float noise at most, no positional shift


def test_guidance_one_is_the_conditional_only_path(model):
    kwargs = dict(num_inference_steps=STEPS, seed=5)
    one = gen.generate_images(model, ["a cat"], guidance_scale=1.0, **kwargs)
    one_neg = gen.generate_images(
        model, ["a cat"], guidance_scale=1.0, negative_prompt="blurry", **kwargs
    )
    with torch.no_grad():
        hidden = gen.prompt_dream_hidden(model, ["a cat"])
        options = gen.ImageOptions(guidance_scale=1.0, num_inference_steps=STEPS)
        cond_only = gen.images_from_hidden(model, hidden, None, options, seed=5)
    guided = gen.generate_images(model, ["a cat"], guidance_scale=3.0, **kwargs)
    assert np.array_equal(_pixels(one), _pixels(cond_only))
    assert np.array_equal(_pixels(one), _pixels(one_neg))
    assert not np.array_equal(_pixels(one), _pixels(guided))


def test_ddpm_and_ddim_both_sample(model):
    kwargs = dict(guidance_scale=2.0, num_inference_steps=STEPS, seed=1)
    ddpm = gen.generate_images(model, ["a cat"], scheduler="ddpm", **kwargs)
    ddim = gen.generate_images(model, ["a cat"], scheduler="ddim", **kwargs)
    assert ddpm[0].size == ddim[0].size
    assert not np.array_equal(_pixels(ddpm), _pixels(ddim))
    with pytest.raises(ValueError, match="scheduler must be one of"):
        gen.generate_images(model, ["a cat"], scheduler="pndm", num_inference_steps=1)


class _Boost:
    """Makes the random tiny model emit one token: the test's stand-in for a trained model."""

    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.token] += 1.0e4
        return scores


def test_interleaved_makes_images_until_the_bound_then_continues_with_text(model):
    clip_calls = []
    tower = model.clip_vision_embedding.clip_vision_model
    hook = tower.register_forward_hook(lambda *_: clip_calls.append(1))
    options = gen.ImageOptions(guidance_scale=2.0, num_inference_steps=2)
    try:
        segments = generate_interleaved(
            model,
            "a story about <image>",
            [_image(4)],
            max_new_tokens=6,
            max_images=2,
            image_options=options,
            logits_processor=_Boost(model.token_ids.dream_start),
        )
    finally:
        hook.remove()
    kinds = ["image" if isinstance(s, Image.Image) else "text" for s in segments]
    assert kinds == ["image", "image", "text"]  # the bound masks <dream_start>: text follows
    assert len(clip_calls) == 3  # the prompt's image, then each generated image fed back
    res = model.stable_diffusion_head.resolution
    assert segments[0].size == (res, res)


def test_interleaved_stops_at_eos_and_is_reproducible(model):
    eos = _Boost(model.token_ids.eos)
    assert generate_interleaved(model, "hello", max_new_tokens=5, logits_processor=eos) == []
    kwargs = dict(max_new_tokens=5, max_images=0, do_sample=True, top_k=20, seed=3)
    first = generate_interleaved(model, "hello", **kwargs)
    assert first == generate_interleaved(model, "hello", **kwargs)
    assert all(isinstance(s, str) for s in first)
