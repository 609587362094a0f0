"""Training samples of the pretrained world zoo: rendered scenes with captions, and text."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from dreamray.data.world.scene import Scene, WorldSpec, render_scene, sample_scene
from dreamray.data.world.text import answer_sentence, caption, draw_instruction, questions

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
    """The world's text: per scene a caption, a drawing instruction and its questions as turns.

    Args:
        scenes: the scenes the text is about.
        seed: picks the templates.

    Returns:
        One line per text.
    """
    rng = random.Random(f"world-corpus/{seed}")
    user, assistant = ROLES
    lines = []
    for scene in scenes:
        lines += [caption(scene, rng), draw_instruction(scene, rng)]
        lines += [f"{user} {qa.question} {assistant} {answer_sentence(qa)}"
                  for qa in questions(scene)]
    return lines
