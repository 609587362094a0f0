"""VQA evaluation: answer generation on an actor pool (resumable), scoring, EvalAI files.

Generation takes a *generator factory*: a picklable zero-argument callable that each actor calls
once to load its model and get a `Generate` function ((prompts, image paths) -> outputs). That
keeps this module independent of how a model is loaded; `dreamllm_generator` is the factory for
our DreamLLM artifacts, `lookup_generator` a model-free one for dry runs and tests.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamray.evals.pool import PoolOptions, chunked, make_pool
from dreamray.evals.results import ResultsStore
from dreamray.evals.telemetry import EvalProgress
from dreamray.evals.vqa_data import VqaDataError, VqaQuestion
from dreamray.evals.vqa_prompts import Generate, PromptPreset, answer_batch
from dreamray.metrics.vqa import summarize_accuracy, vqa_accuracy

GeneratorFactory = Callable[[], Generate]


class VqaWorker:
    """Answers chunks of questions with one model (loaded once, by the factory)."""

    def __init__(
        self,
        factory: GeneratorFactory,
        preset: PromptPreset,
        num_patches: int,
        image_root: str,
        batch_size: int,
    ) -> None:
        self.generate = factory()
        # None: the generator knows its model's CLIP patch count (DreamLLMGenerator does).
        self.num_patches = self.generate.num_patches if num_patches is None else num_patches
        self.preset = preset
        self.image_root = Path(image_root)
        self.batch_size = batch_size

    def answer(self, items: list[dict[str, str]]) -> list[dict[str, str]]:
        """Answer `[{"id", "question", "image"}]`; returns one record per item, same order."""
        records = []
        for batch in chunked(items, self.batch_size):
            results = answer_batch(
                self.generate,
                [item["question"] for item in batch],
                [str(self.image_root / item["image"]) for item in batch],
                self.preset,
                self.num_patches,
            )
            records += [{"id": item["id"], **r} for item, r in zip(batch, results, strict=True)]
        return records


def generate_answers(
    questions: list[VqaQuestion],
    factory: GeneratorFactory,
    preset: PromptPreset,
    store: ResultsStore,
    image_root: str,
    *,
    num_patches: int | None = None,
    batch_size: int = 8,
    chunk_size: int = 64,
    pool: PoolOptions | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Answer every question not yet in `store`, on a pool; return every answer.

    Args:
        questions: the question set.
        factory: the generator factory (called once per actor).
        preset: prompts and post-processing.
        store: the results store; finished chunks are appended as they arrive, so a re-run
            only answers what is missing.
        image_root: folder the questions' image names are relative to.
        num_patches: CLIP patches per image; None: the generator's `num_patches`.
        batch_size: questions per `generate` call.
        chunk_size: questions per actor task (and per store write).
        pool: actors and resources (`num_actors=0`: in-process).
        progress: show a progress bar.

    Returns:
        Answer by question id, for every question.
    """
    by_id = {q.question_id: q for q in questions}
    todo = [
        {"id": qid, "question": by_id[qid].question, "image": by_id[qid].image}
        for qid in store.pending(by_id)
    ]
    if todo:
        tracker = EvalProgress("vqa_generate", len(todo), progress)
        options = pool if pool is not None else PoolOptions()
        with make_pool(
            VqaWorker, options, factory, preset, num_patches, image_root, batch_size
        ) as workers:
            for _, records in workers.map_unordered(VqaWorker.answer, chunked(todo, chunk_size)):
                store.append(records)
                tracker.update(len(records))
        tracker.close()
    done = store.records()
    return {qid: done[qid]["answer"] for qid in by_id}


def score_predictions(
    questions: list[VqaQuestion],
    predictions: dict[str, str],
    variant: str = "official",
    allow_missing: bool = False,
) -> dict[str, Any]:
    """VQA accuracy of predictions, overall and per answer type.

    Args:
        questions: questions with their 10 answers (a val split).
        predictions: answer by question id.
        variant: a `dreamray.metrics.vqa.VARIANTS` name.
        allow_missing: score a question without prediction as 0 instead of failing.

    Returns:
        `{"overall", "n", "per_answer_type", "variant", "missing", "unused_predictions"}`,
        accuracies in percent.

    Raises:
        VqaDataError: a question without answers (a test split), or without a prediction.
    """
    unanswered = [q.question_id for q in questions if q.answers is None]
    if unanswered:
        raise VqaDataError(
            f"{len(unanswered)} questions have no ground-truth answers (e.g. {unanswered[0]}): "
            "a test split is scored by its server; write an EvalAI results file instead"
        )
    missing = [q.question_id for q in questions if q.question_id not in predictions]
    if missing and not allow_missing:
        raise VqaDataError(f"{len(missing)} questions have no prediction, e.g. {missing[:5]}")
    scores = [
        vqa_accuracy(predictions[q.question_id], q.answers, variant)
        if q.question_id in predictions
        else 0.0
        for q in questions
    ]
    summary = summarize_accuracy(scores, [q.answer_type for q in questions])
    known = {q.question_id for q in questions}
    return {
        **summary,
        "variant": variant,
        "missing": len(missing),
        "unused_predictions": sum(1 for p in predictions if p not in known),
    }


def evalai_results(
    questions: list[VqaQuestion], predictions: dict[str, str], fmt: str
) -> list[dict[str, Any]]:
    """The results file an EvalAI server takes for a test split.

    Args:
        questions: the split's questions.
        predictions: answer by question id.
        fmt: the question format (`vizwiz` is keyed by `image`, the others by `question_id`).

    Returns:
        `[{"question_id": int, "answer"}]`, or `[{"image", "answer"}]` for VizWiz.

    Raises:
        VqaDataError: a question without a prediction.
    """
    missing = [q.question_id for q in questions if q.question_id not in predictions]
    if missing:
        raise VqaDataError(f"{len(missing)} questions have no prediction, e.g. {missing[:5]}")
    if fmt == "vizwiz":
        return [{"image": q.question_id, "answer": predictions[q.question_id]} for q in questions]
    return [
        {"question_id": int(q.question_id), "answer": predictions[q.question_id]} for q in questions
    ]


def _lookup(table: dict[str, str], default: str, prompts: list[str], _: list[str]) -> list[str]:
    outputs = []
    for prompt in prompts:
        # The question sits between the image block and the preset's prompt suffix.
        question = re.split(r"<im_end>", prompt, maxsplit=1)[-1]
        outputs.append(next((a for q, a in table.items() if question.startswith(q)), default))
    return outputs


def lookup_generator(table: dict[str, str], default: str = "") -> GeneratorFactory:
    """A model-free factory whose `generate` answers by question text (dry runs, tests).

    Args:
        table: answer by question text (a prompt whose question starts with the key matches).
        default: the output for any other prompt.

    Returns:
        A picklable generator factory.
    """
    return functools.partial(functools.partial, _lookup, dict(table), default)


class DreamLLMGenerator:
    """A DreamLLM artifact as a VQA `Generate`: beam search on prompts with one image each."""

    def __init__(self, model_dir: str, num_beams: int, max_new_tokens: int) -> None:
        import torch

        from dreamray.model.dreamllm import DreamLLM

        # bf16 on a GPU, as the reference's VQA inference; fp32 on CPU (no fast bf16 there).
        cuda = torch.cuda.is_available()
        self.model = DreamLLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else None)
        if cuda:
            self.model.to("cuda")
        self.num_patches = self.model.num_patches
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompts: list[str], images: list[str]) -> list[str]:
        """Decode one answer per prompt (its spelled-out IMG block gets its image)."""
        from PIL import Image

        from dreamray.model.generation import generate_text

        pil = [[Image.open(path).convert("RGB")] for path in images]
        return generate_text(
            self.model, prompts, pil, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
        )


def dreamllm_generator(model_dir: str, num_beams: int, max_new_tokens: int) -> DreamLLMGenerator:
    """The generator factory for a DreamLLM artifact (use with `functools.partial`).

    Args:
        model_dir: the artifact directory (ours or a released checkpoint with configs).
        num_beams: beam width (`VqaParams.num_beams`: the reference protocol's by default).
        max_new_tokens: decode budget (`VqaParams.max_new_tokens`).

    Returns:
        The loaded generator; its `num_patches` is the model's CLIP patch count.

    Raises:
        ArtifactError: `model_dir` is not a loadable artifact.
    """
    return DreamLLMGenerator(model_dir, num_beams, max_new_tokens)
