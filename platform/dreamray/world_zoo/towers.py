"""The pretrained world zoo's comprehension towers, trained on the shapes world and saved in
their real layouts: the Llama LM on the world's text, the CLIP vision tower with a
per-patch attribute head (the diffusion towers are in `diffusion.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dreamray import zoo
from dreamray.data.world.scene import Scene, WorldObject, WorldSpec
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


def _attribute_values(spec: WorldSpec) -> dict[str, tuple[str, ...]]:
    return {"color": spec.colors, "shape": spec.shapes, "size": spec.sizes,
            "position": spec.positions}


def patch_targets(scenes: list[Scene], spec: WorldSpec, grid: int) -> dict[str, torch.Tensor]:
    """Per patch of a `grid` x `grid` split, the attributes of the object that covers most of
    it: [N, grid * grid] class indices per attribute, 0 where no object's bounding box
    reaches the patch, 1 + the value's index otherwise.

    Each image token then carries its object whole (colour, shape, size and where it is),
    so an LLM answers "what color is the circle?" or "what shape is at the top?" by attending
    to the tokens that match one attribute and reading another, the lookup it already does
    over a caption. A head over all patches at once would leave that binding spread across
    tokens, for the LLM to rebuild.
    """
    values = _attribute_values(spec)
    out = {k: torch.zeros(len(scenes), grid * grid, dtype=torch.long) for k in values}
    for row, scene in enumerate(scenes):
        placed = scene.placements()
        for patch in range(grid * grid):
            obj = _covering_object(placed, patch % grid, patch // grid, grid)
            for key, names in values.items():
                out[key][row, patch] = 0 if obj is None else 1 + names.index(getattr(obj, key))
    return out


def _covering_object(placed: list[tuple[WorldObject, float, float, float]], px: int, py: int,
                     grid: int) -> WorldObject | None:
    best, best_area = None, 0.0
    for obj, x, y, r in placed:
        wide = min((px + 1) / grid, x + r) - max(px / grid, x - r)
        high = min((py + 1) / grid, y + r) - max(py / grid, y - r)
        if wide > 0 and high > 0 and wide * high > best_area:
            best, best_area = obj, wide * high
    return best


def scene_attributes(scenes: list[Scene], spec: WorldSpec) -> torch.Tensor:
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
    """Train the CLIP vision tower so that each patch feature of its penultimate layer
    (DreamLLM's `vision_select_layer: -2`) names the object on that patch and the scene it
    is in: one linear head, shared by the patches, classifies the patch's colour, shape, size
    and position (or "empty", `patch_targets`) and tags the values the whole scene shows
    (`scene_attributes`); the head is dropped after training.

    Measured through SFT (VQA on the world's eval set, 160 steps): a head over all patches
    side by side gave colour 0.62 / shape 0.41; the per-patch classes alone 0.23 / 0.71; with
    the scene tags too 0.60 / 0.62. The scene tags keep a colour on every token, the
    per-patch ones bind it to its shape and place.

    Returns:
        (the loss curve, held-out accuracy per attribute over covered patches, and the rate
        of images whose every patch is read right).
    """
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed + 1)
    model = CLIPVisionModel(zoo.tiny_vision_config(spec.image_size))
    grid = spec.image_size // model.config.patch_size
    targets = patch_targets(samples.scenes, spec, grid)
    classes = [1 + len(names) for names in _attribute_values(spec).values()]
    present = scene_attributes(samples.scenes, spec)
    head = torch.nn.Linear(model.config.hidden_size, sum(classes) + present.shape[1])
    pixels = clip_pixels(samples.pixels)
    held_out = max(1, len(pixels) // 10)
    train_n = len(pixels) - held_out

    def logits(idx: torch.Tensor) -> list[torch.Tensor]:
        hidden = model(pixels[idx], output_hidden_states=True).hidden_states[-2]
        return list(head(hidden[:, 1:]).split([*classes, present.shape[1]], dim=-1))

    def loss_of_step(step: int, g: torch.Generator) -> torch.Tensor:
        idx = batch_indices(g, train_n, batch_size)
        *per_patch, scene = logits(idx)
        bag = present[idx].unsqueeze(1).expand_as(scene)
        return F.binary_cross_entropy_with_logits(scene, bag) + sum(
            F.cross_entropy(lg.flatten(0, 1), t[idx].flatten())
            for lg, t in zip(per_patch, targets.values(), strict=True))

    curve = train_steps([*model.parameters(), *head.parameters()], loss_of_step, steps, 2e-3,
                        seed, "clip vision", progress)
    model.save_pretrained(out_dir)
    clip_processor(CLIPImageProcessor, spec.image_size).save_pretrained(out_dir)
    with torch.no_grad():
        idx = torch.arange(train_n, len(pixels))
        return curve, _patch_accuracy(logits(idx)[:-1], {k: t[idx] for k, t in targets.items()})


def _patch_accuracy(logits: list[torch.Tensor], targets: dict[str, torch.Tensor]
                    ) -> dict[str, float]:
    covered = targets["color"] > 0
    right = {k: lg.argmax(-1) == t for lg, (k, t) in zip(logits, targets.items(), strict=True)}
    report = {f"heldout_{k}_accuracy": float(r[covered].float().mean()) for k, r in right.items()}
    every = torch.stack(list(right.values())).all(dim=0).all(dim=1)
    return {**report, "heldout_image_exact": float(every.float().mean())}
