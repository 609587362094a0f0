"""Text about shapes-world scenes: captions, questions with their answers, drawing instructions.

Every sentence is derived from the scene's truth, so a model that learns the text learns the
images' attributes. Templates vary the wording (seeded), never the facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dreamray.data.world.scene import Scene, WorldObject

PLACES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
NUMBERS = ("zero", "one", "two", "three")
_CAPTION_TEMPLATES = ("{objects}.", "A picture of {objects}.", "There is {objects}.")
DESCRIBE = "Describe the image briefly."  # LLaVA-pretrain's captioning request
_DRAW_TEMPLATES = ("Draw {objects}.", "Create an image of {objects}.", "Paint {objects}.")


def describe(obj: WorldObject, with_size: bool = True) -> str:
    """ "a small red square on the left" (article, optional size, colour, shape, place)."""
    size = f"{obj.size} " if with_size else ""
    return f"a {size}{obj.color} {obj.shape} {PLACES[obj.position]}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def caption(scene: Scene, rng: random.Random) -> str:
    """A one-sentence caption naming every object of the scene.

    Args:
        scene: the scene.
        rng: picks the template.

    Returns:
        The caption.
    """
    objects = _join([describe(o) for o in scene.objects])
    return _capitalize(rng.choice(_CAPTION_TEMPLATES).format(objects=objects))


def draw_instruction(scene: Scene, rng: random.Random) -> str:
    """An instruction to draw the scene ("Draw a red square on the left.").

    Args:
        scene: the scene.
        rng: picks the template.

    Returns:
        The instruction.
    """
    return rng.choice(_DRAW_TEMPLATES).format(objects=_join([describe(o) for o in scene.objects]))


@dataclass(frozen=True)
class QuestionAnswer:
    """A question about a scene with its one correct answer.

    Attributes:
        question: the question.
        answer: the answer (one word, lower case: the VQA normalisation keeps it as is).
        answer_type: color | shape | position | number.
        question_type: the VQA-style question prefix ("what color is the").
    """

    question: str
    answer: str
    answer_type: str
    question_type: str


def questions(scene: Scene) -> list[QuestionAnswer]:
    """Every unambiguous question about the scene: colour and position of each shape whose
    kind is unique in it, the shape at each occupied place, and the object count.

    Args:
        scene: the scene.

    Returns:
        The questions, in a fixed order.
    """
    out = []
    kinds = [o.shape for o in scene.objects]
    for obj in scene.objects:
        out.append(
            QuestionAnswer(
                f"What shape is {PLACES[obj.position]}?", obj.shape, "shape", "what shape is"
            )
        )
        if kinds.count(obj.shape) == 1:
            out.append(
                QuestionAnswer(
                    f"What color is the {obj.shape}?", obj.color, "color", "what color is the"
                )
            )
            out.append(
                QuestionAnswer(
                    f"Where is the {obj.shape}?", obj.position, "position", "where is the"
                )
            )
    count = len(scene.objects)
    out.append(QuestionAnswer("How many shapes are there?", NUMBERS[count], "number", "how many"))
    return out


def answer_sentence(qa: QuestionAnswer) -> str:
    """The answer as a short sentence (conversation turns read better than one word)."""
    if qa.answer_type == "number":
        return f"There are {qa.answer} shapes." if qa.answer != "one" else "There is one shape."
    return _capitalize(qa.answer) + "."
