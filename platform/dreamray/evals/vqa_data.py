"""VQA question sets in their original formats, read into one record type.

- `vqav2`, `okvqa`: the VQA API's two files: questions (`{"questions": [...], "data_subtype"}`)
  and annotations (`{"annotations": [{question_id, answers: [{answer}], answer_type, ...}]}`);
  images are `COCO_<data_subtype>_<image_id:012d>.jpg`. Test splits have no annotations.
- `textvqa`: one file `{"data": [{question_id, question, image_id, answers: [str]}]}`;
  images are `<image_id>.jpg`.
- `vizwiz`: one file, a list of `{image, question, answers: [{answer}], answer_type}`; the image
  name is the question id (VizWiz has no other).
- `omni`: the reference's `OMNI_format_*.json`: a list of `{question_id, image, question, answer}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamray.metrics.vqa import NUM_ANSWERS

FORMATS = ("vqav2", "okvqa", "textvqa", "vizwiz", "omni")


class VqaDataError(ValueError):
    """A question file, annotation file or prediction file that cannot be used."""


@dataclass(frozen=True)
class VqaQuestion:
    """One question; `answers` is None on test splits."""

    question_id: str
    image: str
    question: str
    answers: tuple[str, ...] | None
    answer_type: str | None = None
    question_type: str | None = None


def load_questions(
    fmt: str, questions: str | Path, annotations: str | Path | None = None
) -> list[VqaQuestion]:
    """Read a question set.

    Args:
        fmt: one of `FORMATS`.
        questions: the question file (for single-file formats, the file).
        annotations: the VQA-API annotation file (`vqav2` / `okvqa`), None for test splits.

    Returns:
        The questions in file order.

    Raises:
        VqaDataError: an unknown format, a malformed file, a missing annotation, duplicate ids,
            or a question whose answers are not exactly 10 (named by its id).
    """
    readers = {
        "vqav2": _vqa_api,
        "okvqa": _vqa_api,
        "textvqa": _textvqa,
        "vizwiz": _vizwiz,
        "omni": _omni,
    }
    if fmt not in readers:
        raise VqaDataError(f"unknown VQA format {fmt!r}; known: {list(FORMATS)}")
    if annotations is not None and fmt not in ("vqav2", "okvqa"):
        raise VqaDataError(f"format {fmt} keeps its answers in the question file: no annotations")
    try:
        items = readers[fmt](
            _read_json(questions), _read_json(annotations) if annotations else None
        )
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, VqaDataError):
            raise
        raise VqaDataError(f"{questions}: not a {fmt} file: {type(err).__name__}: {err}") from err
    _check(items, str(questions))
    return items


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise VqaDataError(f"{path}: cannot read JSON: {err}") from err


def _vqa_api(questions: dict[str, Any], annotations: dict[str, Any] | None) -> list[VqaQuestion]:
    subtype = questions["data_subtype"]
    by_id = {}
    if annotations is not None:
        by_id = {str(a["question_id"]): a for a in annotations["annotations"]}
    items = []
    for q in questions["questions"]:
        qid = str(q["question_id"])
        ann = by_id.get(qid)
        if annotations is not None and ann is None:
            raise VqaDataError(f"question {qid} has no annotation")
        items.append(
            VqaQuestion(
                question_id=qid,
                image=f"COCO_{subtype}_{int(q['image_id']):012d}.jpg",
                question=q["question"],
                answers=tuple(a["answer"] for a in ann["answers"]) if ann else None,
                answer_type=ann["answer_type"] if ann else None,
                question_type=ann["question_type"] if ann else None,
            )
        )
    return items


def _textvqa(data: dict[str, Any], _: None) -> list[VqaQuestion]:
    return [
        VqaQuestion(
            str(q["question_id"]),
            f"{q['image_id']}.jpg",
            q["question"],
            tuple(q["answers"]) if "answers" in q else None,
        )
        for q in data["data"]
    ]


def _vizwiz(data: list[dict[str, Any]], _: None) -> list[VqaQuestion]:
    return [
        VqaQuestion(
            q["image"],
            q["image"],
            q["question"],
            tuple(a["answer"] for a in q["answers"]) if "answers" in q else None,
            q.get("answer_type"),
        )
        for q in data
    ]


def _omni(data: list[dict[str, Any]], _: None) -> list[VqaQuestion]:
    return [
        VqaQuestion(
            str(q["question_id"]),
            q["image"],
            q["question"],
            tuple(q["answer"]) if "answer" in q else None,
        )
        for q in data
    ]


def _check(items: list[VqaQuestion], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.question_id in seen:
            raise VqaDataError(f"{where}: duplicate question id {item.question_id}")
        seen.add(item.question_id)
        if item.answers is not None and len(item.answers) != NUM_ANSWERS:
            raise VqaDataError(
                f"{where}: question {item.question_id} has {len(item.answers)} answers; "
                f"VQA accuracy needs exactly {NUM_ANSWERS}"
            )


def load_predictions(path: str | Path) -> dict[str, str]:
    """Read predictions: a JSON list of `{question_id|image|id, answer}` or a JSONL store.

    Args:
        path: the VQA results format (`question_id`), VizWiz's (`image`), or our results store.

    Returns:
        Answer by question id (as a string).

    Raises:
        VqaDataError: unreadable, an entry without an id or answer, or a duplicate id.
    """
    text = Path(path).read_text() if Path(path).is_file() else None
    if text is None:
        raise VqaDataError(f"{path}: no such predictions file")
    try:
        entries = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except ValueError as err:
        raise VqaDataError(f"{path}: not JSON / JSONL: {err}") from err
    answers: dict[str, str] = {}
    for entry in entries:
        key = next((k for k in ("question_id", "image", "id") if k in entry), None)
        if key is None or "answer" not in entry:
            raise VqaDataError(f"{path}: prediction without an id or an answer: {entry}")
        qid = str(entry[key])
        if qid in answers:
            raise VqaDataError(f"{path}: two predictions for question {qid}")
        answers[qid] = str(entry["answer"])
    return answers
