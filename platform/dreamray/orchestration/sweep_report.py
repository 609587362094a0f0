"""report.md's sweep sections: per swept stage, a trials table and the metric against each
swept value (`plots/<stage>_sweep.png`), read from the stage artifact's stage.json."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from dreamray.config import RecipeSpec, TrainStageSpec
from dreamray.config.sweep_specs import LogUniform
from dreamray.orchestration.ledger import StageRecord, artifact_rel
from dreamray.orchestration.manifest import read_manifest
from dreamray.orchestration.storage import RunStorage, StorageError
from dreamray.orchestration.sweep_trials import SWEEP_DETAILS

STATUS_COLOURS = {"completed": "tab:blue", "stopped": "tab:orange", "errored": "tab:red"}


def sweep_sections(storage: RunStorage, recipe: RecipeSpec, ids: Mapping[str, str],
                   records: Mapping[str, StageRecord | None]) -> list[str]:
    """The report lines of every finished swept stage; writes their plots.

    Args:
        storage: the run storage.
        recipe: the recipe that ran.
        ids: stage identities.
        records: stage -> ledger record (None if it never ran).

    Returns:
        Markdown lines (empty when no swept stage finished).
    """
    lines: list[str] = []
    for name in recipe.topological_order():
        stage, rec = recipe.stages[name], records.get(name)
        if not isinstance(stage, TrainStageSpec) or stage.sweep is None:
            continue
        if rec is None or rec.status != "done":
            continue
        try:
            details = read_manifest(storage, artifact_rel(name, ids[name]))[SWEEP_DETAILS]
        except (StorageError, KeyError):
            lines += [f"## Sweep: {name}", "", "- no trial record in its stage.json", ""]
            continue
        lines += trials_table(name, details)
        png = plot_trials(details, log_keys=_log_keys(stage))
        if png:
            storage.write_bytes(f"plots/{name}_sweep.png", png)
            lines += [f"![{name} sweep](plots/{name}_sweep.png)", ""]
    return lines


def _log_keys(stage: TrainStageSpec) -> set[str]:
    assert stage.sweep is not None
    return {k for k, d in stage.sweep.space.items() if isinstance(d, LogUniform)}


def trials_table(name: str, details: Mapping[str, Any]) -> list[str]:
    """A markdown table: one row per trial, its swept values, metric, steps, status, winner.

    Args:
        name: the stage.
        details: the `sweep` entry of its stage.json.

    Returns:
        The section's lines.
    """
    trials = details["trials"]
    keys = list(trials[0]["values"]) if trials else []
    metric = details["metric"]
    lines = [f"## Sweep: {name}", "",
             f"{len(trials)} trials, best {metric} ({details['mode']}) wins.", "",
             "| trial | " + " | ".join(keys) + f" | {metric} | steps | status | winner |",
             "|---" * (len(keys) + 5) + "|"]
    for t in trials:
        values = " | ".join(_fmt(t["values"][k]) if k in t["values"] else "" for k in keys)
        score = "" if t["metric"] is None else _fmt(t["metric"])
        lines.append(f"| {t['trial_id']} | {values} | {score} | {t['steps']} | {t['status']} | "
                     f"{'**winner**' if t['winner'] else ''} |")
    return lines + [""]


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_trials(details: Mapping[str, Any], log_keys: set[str]) -> bytes | None:
    """One PNG with a panel per swept key: each trial's last metric against its value.

    Args:
        details: the `sweep` entry of a stage.json.
        log_keys: keys drawn on a log axis (loguniform ones).

    Returns:
        PNG bytes, or None when no trial has a metric.
    """
    trials = [t for t in details["trials"] if t["metric"] is not None]
    if not trials:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(trials[0]["values"])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for t in trials:
            ax.scatter([_axis_value(t["values"][key])], [t["metric"]],
                       c=STATUS_COLOURS.get(t["status"], "grey"),
                       marker="*" if t["winner"] else "o", s=140 if t["winner"] else 40)
        if key in log_keys:
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize="small")
        ax.set_ylabel(details["metric"], fontsize="small")
    fig.suptitle("trials (star: winner; blue completed, orange stopped)", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _axis_value(value: Any) -> Any:
    # A categorical choice (a string, a list) is drawn at its text.
    return value if isinstance(value, (int, float)) else str(value)
