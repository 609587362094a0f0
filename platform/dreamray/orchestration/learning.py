"""The report's learning table: what each evaluated checkpoint can do, side by side.

Every done eval stage contributes the scores of its task to the row of the model it evaluated
(`eval.model`: `base`, `stage:<name>` or a directory): FID from `coco_fid`, colour / shape /
position accuracy of generated images (with chance levels) from `attribute_match`, overall and
per-answer-type VQA accuracy from `vqa`. Rows follow the DAG order of the evaluated stages, the
base model first. Pure: reads `result.json` files through the run storage. Beside it,
`loss_trend_table` says whether each train stage's losses fell (first vs last 10% of steps).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from dreamray.config import RecipeSpec
from dreamray.contracts import BASE_SOURCE, StageRef
from dreamray.evals.results import RESULT_FILE
from dreamray.orchestration.ledger import StageRecord, artifact_rel
from dreamray.orchestration.storage import RunStorage

# One stage's per-step scalars: tag -> [(step, value)] (`report.load_history`).
History = dict[str, list[tuple[int, float]]]

# The world VQA set's answer types (`data/world/text.py`), shown as columns in this order.
VQA_TYPES = ("color", "shape", "position", "number")


def _attributes() -> tuple[str, ...]:
    # imported when a table is made: the reader pulls scipy into every driver's start otherwise
    from dreamray.evals.attributes import READ_ATTRIBUTES

    return READ_ATTRIBUTES


@dataclass
class LearningRow:
    """The scores of one evaluated model.

    Attributes:
        model: what was evaluated (`base`, `stage:<name>`, a directory).
        fid: COCO-format FID, if evaluated.
        accuracy: attribute -> accuracy of generated images (0-1).
        chance: attribute -> its chance level.
        unreadable: images the attribute reader could not read, by reason.
        vqa: `overall` and answer type -> VQA accuracy in percent.
        evals: the eval stages that filled the row.
    """

    model: str
    fid: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    vqa: dict[str, float] = field(default_factory=dict)
    evals: list[str] = field(default_factory=list)

    def add(self, task: str, result: Mapping) -> None:
        """Take the scores of one eval task's result."""
        if task == "coco_fid" and result.get("fid") is not None:
            self.fid = float(result["fid"])
        elif task == "attribute_match":
            for attr in _attributes():
                if f"{attr}_accuracy" in result:
                    self.accuracy[attr] = float(result[f"{attr}_accuracy"])
                    self.chance[attr] = float(result[f"{attr}_chance"])
            self.unreadable = dict(result.get("unreadable") or {})
        elif task == "vqa" and "overall" in result:
            self.vqa = {"overall": float(result["overall"]),
                        **{k: float(v) for k, v in (result.get("per_answer_type") or {}).items()}}


def learning_rows(storage: RunStorage, recipe: RecipeSpec, ids: Mapping[str, str],
                  records: Mapping[str, StageRecord | None]) -> list[LearningRow]:
    """One row per evaluated model, from the done eval stages' results.

    Args:
        storage: the run storage.
        recipe: the recipe.
        ids: stage identities.
        records: stage -> its ledger record (None: never ran).

    Returns:
        The rows, the base model first, then in the DAG order of the evaluated stages.
    """
    order = recipe.topological_order()
    rows: dict[str, LearningRow] = {}
    for name in order:
        stage, rec = recipe.stages[name], records.get(name)
        if stage.kind != "eval" or rec is None or rec.status != "done":
            continue
        rel = f"{artifact_rel(name, ids[name])}/{RESULT_FILE}"
        if not storage.exists(rel):
            continue
        row = rows.setdefault(stage.eval.model, LearningRow(stage.eval.model))
        row.add(stage.eval.task, json.loads(storage.read_text(rel)))
        row.evals.append(name)

    def rank(model: str) -> int:
        if model == BASE_SOURCE:
            return -1
        ref = StageRef.parse(model)
        return order.index(ref.name) if ref is not None and ref.name in order else len(order)

    return sorted(rows.values(), key=lambda r: rank(r.model))


def learning_table(rows: list[LearningRow]) -> list[str]:
    """The report section: a markdown table of `rows` (nothing when there is no row).

    Args:
        rows: from `learning_rows`.

    Returns:
        Markdown lines.
    """
    if not rows:
        return []
    attributes = _attributes()
    heads = ["model", "FID", *(f"{a} acc" for a in attributes), "VQA",
             *(f"VQA {t}" for t in VQA_TYPES), "unreadable"]
    lines = ["## Learning", "",
             "Generated images scored by the attribute reader (chance in brackets); VQA "
             "accuracy in percent, overall and by question type.", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = [row.model, _num(row.fid, "{:.2f}")]
        cells += [f"{row.accuracy[a]:.2f} ({row.chance[a]:.2f})" if a in row.accuracy else ""
                  for a in attributes]
        cells += [_num(row.vqa.get(k), "{:.1f}") for k in ("overall", *VQA_TYPES)]
        cells.append(", ".join(f"{k}: {v}" for k, v in sorted(row.unreadable.items())))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def loss_trend_table(histories: Mapping[str, History]) -> list[str]:
    """Did each train stage's losses fall? Mean of the first and of the last 10% of steps.

    Args:
        histories: train stage -> its `History`.

    Returns:
        Markdown lines: one row per stage and loss tag; nothing when no stage logged a loss.
    """
    rows = []
    for name, series in histories.items():
        for tag in sorted(t for t in series if t.endswith("loss") and len(series[t]) >= 2):
            values = [v for _, v in sorted(series[tag])]
            window = max(1, len(values) // 10)
            first = sum(values[:window]) / window
            last = sum(values[-window:]) / window
            rows.append(f"| {name} | {tag} | {len(values)} | {first:.4g} | {last:.4g} | "
                        f"{'yes' if last < first else '**no**'} |")
    if not rows:
        return []
    return ["## Did the losses fall?", "",
            "Mean of each loss over the first and over the last 10% of a stage's steps.", "",
            "| stage | loss | steps | first 10% | last 10% | fell |", "|---|---|---|---|---|---|",
            *rows, ""]
