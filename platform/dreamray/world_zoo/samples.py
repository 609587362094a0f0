"""Training samples of the pretrained world zoo: rendered scenes with captions, and text."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from dreamray.data.world.scene import Scene, WorldSpec, render_scene, sample_scene
from dreamray.data.world.text import (
    DESCRIBE,
    answer_sentence,
    caption,
    draw_instruction,
    questions,
)

# Vicuna's conversation roles, so the tokenizer learns them as whole pieces.
ROLES = ("USER:", "ASSISTANT:")


@dataclass(frozen=True)
class WorldSamples:
    """Scenes with their images and captions.

    Attributes:
        scenes: the scenes (their truth).
        pixels: [N, 3, S, S] float images in [-1, 1].
        captions: one caption per scene.
    """

    scenes: list[Scene]
    pixels: torch.Tensor
    captions: list[str]


def world_samples(
    spec: WorldSpec, num_scenes: int, seed: int, max_objects: int = 1
) -> WorldSamples:
    """Render `num_scenes` scenes of 1..max_objects objects with a caption each.

    Args:
        spec: the world (its image size is the samples' size).
        num_scenes: how many.
        seed: the seed (same seed, same samples).
        max_objects: most objects per scene.

    Returns:
        The samples.
    """
    rng = random.Random(f"world-zoo/{seed}")
    scenes = world_scenes(spec, num_scenes, seed, max_objects)
    return WorldSamples(scenes, render_pixels(scenes, spec), [caption(s, rng) for s in scenes])


def render_pixels(scenes: list[Scene], spec: WorldSpec) -> torch.Tensor:
    """The scenes rendered as one [N, 3, S, S] float tensor in [-1, 1]."""
    arrays = np.stack([np.asarray(render_scene(s, spec), dtype=np.float32) for s in scenes])
    return (torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0).contiguous()


def world_scenes(spec: WorldSpec, num_scenes: int, seed: int, max_objects: int) -> list[Scene]:
    """`num_scenes` scenes of 1..max_objects objects (not rendered).

    Args:
        spec: the world.
        num_scenes: how many.
        seed: the seed.
        max_objects: most objects per scene (<= spec.max_objects).

    Returns:
        The scenes.
    """
    rng = random.Random(f"world-scenes/{seed}")
    return [sample_scene(rng, spec, rng.randint(1, max_objects)) for _ in range(num_scenes)]


def world_corpus(scenes: list[Scene], seed: int) -> list[str]:
    """The world's text, grounded: per scene a caption, then turns that answer from it.

    A frozen LLM can only use an image whose projected tokens it reads like text it already
    answers from, and dream queries can only carry a prompt's content forward if the LLM does.
    So the questions and the re-description follow the scene's caption in the same line, where
    the image's tokens sit in a conversation (``USER: <image>\\nquestion``): the LLM learns
    to answer from its context, not from a prior over answers.

    Args:
        scenes: the scenes the text is about.
        seed: picks the templates.

    Returns:
        Three lines per scene: its caption; a drawing instruction answered by a description;
        the caption followed by every question about the scene and a request to describe it,
        as conversation turns.
    """
    rng = random.Random(f"world-corpus/{seed}")
    user, assistant = ROLES
    lines = []
    for scene in scenes:
        described = caption(scene, rng)
        turns = [f"{qa.question} {assistant} {answer_sentence(qa)}" for qa in questions(scene)]
        turns.append(f"{DESCRIBE} {assistant} {caption(scene, rng)}")
        rng.shuffle(turns)
        lines += [
            described,
            f"{user} {draw_instruction(scene, rng)} {assistant} {caption(scene, rng)}",
            f"{user} {described}\n" + f" {user} ".join(turns),
        ]
    return lines
