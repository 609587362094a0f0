"""Helpers shared by the model tests: a tiny spec, a cached tiny DreamLLM, hand-built batches."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch

from dreamray.config.specs import ModelSpec
from dreamray.model.tokens import IGNORE_INDEX

# One thread: the machine's cores are shared, and oversubscribed threads make these tiny ops
# 10-20x slower than a single thread does.
torch.set_num_threads(1)

NUM_QUERIES = 8  # small Q keeps the sequences short; the code path is the same as Q = 64


def tiny_spec(zoo, **overrides) -> ModelSpec:
    """A ModelSpec on the tiny zoo."""
    fields = dict(
        llm_path=str(zoo.llm),
        vision_path=str(zoo.vision),
        diffusion_path=str(zoo.diffusion),
        num_dream_queries=NUM_QUERIES,
        max_length=256,
        gradient_checkpointing=False,
    )
    fields.update(overrides)
    return ModelSpec(**fields)


@lru_cache(maxsize=4)
def _built(zoo, frozen_overrides: tuple):
    from dreamray.model.build import build_dreamllm

    torch.manual_seed(0)
    return build_dreamllm(tiny_spec(zoo, **dict(frozen_overrides)))


def built_model(zoo, **overrides):
    """A fresh copy of a tiny DreamLLM (built once per spec per session)."""
    return copy.deepcopy(_built(zoo, tuple(sorted(overrides.items()))))


def _text(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def make_batch(model, kind: str = "mixed") -> dict:
    """A 2-sample batch in the collator's contract.

    Args:
        model: the DreamLLM (for its tokenizer, ids and block sizes).
        kind: ``mixed`` (IMG in sample 0, DRM + IMG in sample 1), ``no_images`` (DRM only),
            ``no_dreams`` (IMG only) or ``text``.
    """
    tok, t = model.tokenizer, model.token_ids
    img, drm = t.image_block(model.num_patches), t.dream_block(model.num_queries)
    a, b = _text(tok, "a red dog on the beach"), _text(tok, "draw a cat")
    blocks = {
        "mixed": ([img], [drm, img]),
        "no_images": ([], [drm]),
        "no_dreams": ([img], [img]),
        "text": ([], []),
    }[kind]
    rows = []
    for i, row_blocks in enumerate(blocks):
        ids = [t.bos] + (a if i == 0 else b)
        for block in row_blocks:
            ids += block + _text(tok, " and more")
        rows.append(ids + [t.eos])
    return _pad(model, rows)


def _pad(model, rows: list[list[int]]) -> dict:
    t = model.token_ids
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), t.pad)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = input_ids.clone()
    for tid in t.unsupervised_ids():
        labels[labels == tid] = IGNORE_INDEX
    n_img = int((input_ids == t.im_start).sum())
    n_dm = int((input_ids == t.dream_start).sum())
    clip = model.clip_vision_embedding.image_size
    res = model.stable_diffusion_head.resolution
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "clip_pixel_values": torch.randn(n_img, 3, clip, clip, generator=g),
        "sd_pixel_values": torch.rand(n_dm, 3, res, res, generator=g) * 2 - 1,
    }
