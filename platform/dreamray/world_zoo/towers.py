"""The pretrained world zoo's comprehension towers, trained on the shapes world and saved in
their real layouts: the Llama LM on the world's text, the CLIP vision tower with an attribute
head (the diffusion towers are in `diffusion.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dreamray import zoo
from dreamray.data.world.scene import Scene, WorldSpec
from dreamray.model.layouts import CLIP_MEAN, CLIP_STD, clip_processor
from dreamray.model.tokens import IGNORE_INDEX
from dreamray.world_zoo.samples import WorldSamples
from dreamray.world_zoo.training import LossCurve, batch_indices, train_steps


def _text_batch(tok: Any, lines: list[str]) -> dict[str, torch.Tensor]:
    # Padded by hand: the saved tokenizer must have no pad token, like Vicuna's.
    rows = [torch.tensor(ids) for ids in tok([line + tok.eos_token for line in lines]).input_ids]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.eos_token_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_llm(out_dir: Path, corpus: list[str], steps: int, batch_size: int, seed: int,
              progress: bool) -> LossCurve:
    """Train the tokenizer and the tiny Llama on `corpus`; save both to `out_dir`.

    Returns:
        The LM loss curve.
    """
    from transformers import LlamaForCausalLM

    tok = zoo.build_tokenizer(out_dir, corpus)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(zoo.tiny_llm_config(tok))

    def loss_of_step(step: int, g: torch.Generator) -> torch.Tensor:
        lines = [corpus[int(i)] for i in batch_indices(g, len(corpus), batch_size)]
        return model(**_text_batch(tok, lines)).loss

    curve = train_steps(model.parameters(), loss_of_step, steps, 3e-3, seed, "llm", progress)
    model.save_pretrained(out_dir)  # the tokenizer is saved by build_tokenizer
    return curve


def attribute_targets(scenes: list[Scene], spec: WorldSpec) -> torch.Tensor:
    """Multi-hot [N, colours + shapes + positions]: which values a scene's objects show."""
    values = [*spec.colors, *spec.shapes, *spec.positions]
    index = {v: i for i, v in enumerate(values)}
    out = torch.zeros(len(scenes), len(values))
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            out[row, [index[obj.color], index[obj.shape], index[obj.position]]] = 1.0
    return out


def clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images normalised as the CLIP processor does (its size is the world's)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((pixels + 1) / 2 - mean) / std


def train_vision(out_dir: Path, samples: WorldSamples, spec: WorldSpec, steps: int,
                 batch_size: int, seed: int, progress: bool) -> tuple[LossCurve, dict[str, float]]:
    """Train the CLIP vision tower so that its penultimate layer (DreamLLM's
    `vision_select_layer: -2`) encodes the scene's attributes where they are: a linear
    multi-label head on that layer's patch features laid side by side (not averaged: which
    patch shows the shape is the position), dropped after training.

    Returns:
        (the loss curve, the head's held-out label accuracy and exact-match rate).
    """
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed + 1)
    model = CLIPVisionModel(zoo.tiny_vision_config(spec.image_size))
    targets = attribute_targets(samples.scenes, spec)
    patches = (spec.image_size // model.config.patch_size) ** 2
    head = torch.nn.Linear(patches * model.config.hidden_size, targets.shape[1])
    pixels = clip_pixels(samples.pixels)
    held_out = max(1, len(pixels) // 10)
    train_n = len(pixels) - held_out

    def logits(idx: torch.Tensor) -> torch.Tensor:
        hidden = model(pixels[idx], output_hidden_states=True).hidden_states[-2]
        return head(hidden[:, 1:].flatten(1))

    def loss_of_step(step: int, g: torch.Generator) -> torch.Tensor:
        idx = batch_indices(g, train_n, batch_size)
        return F.binary_cross_entropy_with_logits(logits(idx), targets[idx])

    curve = train_steps([*model.parameters(), *head.parameters()], loss_of_step, steps, 1e-3,
                        seed, "clip vision", progress)
    with torch.no_grad():
        idx = torch.arange(train_n, len(pixels))
        right = (logits(idx) > 0).float() == targets[idx]
    model.save_pretrained(out_dir)
    clip_processor(CLIPImageProcessor, spec.image_size).save_pretrained(out_dir)
    return curve, {"heldout_label_accuracy": float(right.float().mean()),
                   "heldout_exact_match": float(right.all(dim=1).float().mean())}
