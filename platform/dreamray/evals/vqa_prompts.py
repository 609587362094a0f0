"""The reference's VQA prompts (vicuna_v1.1), per-benchmark presets and answer post-processing.

The reference (`omni/eval/vqa/vqa_inference.py`, `omni/utils/conversation.py`) builds

    " A chat between ... questions. USER: {system}<im_start><im_patch>*P<im_end>{question}{prompt}
     ASSISTANT: {post_prompt}"

(one line; the pieces are concatenated without spaces; with no post-prompt it ends in
"ASSISTANT:"), decodes with 5 beams, strips the output and a trailing `</s>`, and with `clip`
deletes `.` and `"`, keeps the text before the first comma and lowercases it. VizWiz first asks
"{question}Is the answer can be known?" without system prompt; any "no" in that answer (a
substring test, so "not" or "snow" count too) makes the answer "unanswerable".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dreamray.model.tokens import IM_END, IM_PATCH, IM_START

VICUNA_V1_1_SYSTEM = (
    " A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
STOP = "</s>"
UNANSWERABLE = "unanswerable"
ANSWERABLE_CHECK = "Is the answer can be known?"  # sic, the reference's wording

_SYS = "Based on the image, please answer the question."
_ONE_WORD = "Please provide an accurate answer within one word."
# scripts/eval/vqa/eval_vqa.sh passes "The short answer '\(one word\)' is:"; the value goes
# through two unquoted os.system command lines (eval_dreamllm.py, multi_hardware_eval.py), whose
# shells drop the quotes and the backslashes: the model saw "The short answer (one word) is:".
_SHORT = "The short answer (one word) is:"


@dataclass(frozen=True)
class PromptPreset:
    """The prompt pieces and post-processing of one benchmark."""

    system_prompt: str = ""
    prompt: str = ""
    post_prompt: str = ""
    clip: bool = False
    answerable_check: bool = False
    image_separator: str = ""


# From eval_vqa.sh (the settings of the paper's numbers where the script has several).
PRESETS = {
    "vqav2": PromptPreset(_SYS, _ONE_WORD, _SHORT, clip=True),
    "okvqa": PromptPreset(
        "", "Please provide an accurate and brief answer within one word.", _SHORT, clip=True
    ),
    "textvqa": PromptPreset(_SYS, _ONE_WORD, "The answer is:", clip=True),
    "vizwiz_val": PromptPreset(answerable_check=True),
    "vizwiz_test": PromptPreset(
        _SYS, _ONE_WORD, "The answer is:", clip=True, answerable_check=True
    ),
    # LLaVA's own turn, as its instruction data spells it ("<image>\nquestion"), with no
    # benchmark wording around the question: for models tuned only on such turns.
    "conversation": PromptPreset(clip=True, image_separator="\n"),
}


def image_block_text(num_patches: int) -> str:
    """`<im_start>` + num_patches x `<im_patch>` + `<im_end>` as text."""
    return IM_START + IM_PATCH * num_patches + IM_END


def vicuna_v1_1(user: str, assistant_prefix: str = "") -> str:
    """One user turn and the start of the assistant's, in the vicuna_v1.1 template.

    Args:
        user: the user message.
        assistant_prefix: text the assistant's answer starts with (the post-prompt), or "".

    Returns:
        The prompt; it ends in "ASSISTANT:" when there is no prefix (the template's rule).
    """
    head = f"{VICUNA_V1_1_SYSTEM} USER: {user} "
    return head + (f"ASSISTANT: {assistant_prefix}" if assistant_prefix else "ASSISTANT:")


def vqa_prompt(question: str, preset: PromptPreset, num_patches: int) -> str:
    """The answer prompt of one question."""
    image = image_block_text(num_patches) + preset.image_separator
    user = preset.system_prompt + image + question + preset.prompt
    return vicuna_v1_1(user, preset.post_prompt)


def answerable_check_prompt(question: str, num_patches: int) -> str:
    """VizWiz's first pass: may the question be answered at all?"""
    return vicuna_v1_1(image_block_text(num_patches) + question + ANSWERABLE_CHECK)


def clean_output(text: str) -> str:
    """The reference's decoding clean-up: strip, drop a trailing `</s>`, strip."""
    text = text.strip()
    if text.endswith(STOP):
        text = text[: -len(STOP)]
    return text.strip()


def postprocess(text: str, clip: bool) -> str:
    """The reference's `--clip True` post-processing (or nothing).

    Args:
        text: the cleaned model output.
        clip: delete `.` and `"`, keep what precedes the first comma, lowercase.

    Returns:
        The answer to score.
    """
    if not clip:
        return text
    return text.replace(".", "").replace('"', "").split(",")[0].lower()


Generate = Callable[[list[str], list[str]], list[str]]
"""(prompts, image paths) -> raw decoded outputs, one per prompt."""


def answer_batch(
    generate: Generate,
    questions: list[str],
    images: list[str],
    preset: PromptPreset,
    num_patches: int,
) -> list[dict[str, str]]:
    """Answer a batch of questions as the reference does (two passes for VizWiz).

    Args:
        generate: the model's batched text generation (5-beam in the reference protocol).
        questions: question texts.
        images: their image paths.
        preset: the benchmark's prompts and post-processing.
        num_patches: CLIP patches per image (256 for ViT-L/14 at 224 px).

    Returns:
        One `{"answer", "raw"}` per question (`raw` is the cleaned, un-post-processed output;
        `check` too when the answerable check ran).
    """
    results: list[dict[str, str]] = [{} for _ in questions]
    todo = list(range(len(questions)))
    if preset.answerable_check:
        checks = generate(
            [answerable_check_prompt(questions[i], num_patches) for i in todo],
            [images[i] for i in todo],
        )
        for i, raw in zip(list(todo), checks, strict=True):
            results[i]["check"] = clean_output(raw)
            if "no" in results[i]["check"].lower():
                results[i].update(answer=UNANSWERABLE, raw=UNANSWERABLE)
                todo.remove(i)
    outputs = generate(
        [vqa_prompt(questions[i], preset, num_patches) for i in todo], [images[i] for i in todo]
    )
    for i, raw in zip(todo, outputs, strict=True):
        results[i].update(raw=clean_output(raw), answer=postprocess(clean_output(raw), preset.clip))
    return results
