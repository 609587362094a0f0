"""The run report: `report.md` with a table of every stage, loss curves and an image grid.

Loss curves come from the per-step history a stage returned (`metrics/<stage>-<id12>.jsonl`)
and from TensorBoard event files under `tensorboard/<stage>-<id12>/` or the stage's Ray Train
directory; generated images from an eval stage's artifact (`*.png` / `*.jpg` files).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path

from dreamray.config import RecipeSpec
from dreamray.evals.results import GRID_FILE
from dreamray.orchestration.identity import stage_key
from dreamray.orchestration.learning import (
    History,
    learning_rows,
    learning_table,
    loss_trend_table,
)
from dreamray.orchestration.ledger import Ledger, StageRecord, artifact_rel, train_rel
from dreamray.orchestration.storage import RunStorage
from dreamray.orchestration.sweep_report import sweep_sections

REPORT = "report.md"
LOSS_PLOT = "plots/losses.png"
GRID_MAX_IMAGES = 16


def write_report(storage: RunStorage, recipe: RecipeSpec, ids: Mapping[str, str],
                 states: Mapping[str, str], records: Mapping[str, StageRecord]) -> str:
    """Write report.md and its plots into the run directory.

    Args:
        storage: the run storage.
        recipe: the recipe that ran.
        ids: stage identities.
        states: stage -> state at the end of the run.
        records: stage -> ledger record of this run's stages (others are read from the ledger).

    Returns:
        The URI of report.md.
    """
    ledger = Ledger(storage)
    all_records = {n: records.get(n) or ledger.read(n) for n in recipe.topological_order()}
    lines = [f"# Run report: {recipe.name}", "",
             f"- run dir: `{storage.uri}`",
             f"- written: {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    lines += stage_table(recipe, states, all_records)
    lines += learning_table(learning_rows(storage, recipe, ids, all_records))
    lines += timeline(all_records)
    lines += plot_sections(storage, recipe, ids, all_records)
    lines += sweep_sections(storage, recipe, ids, all_records)
    storage.write_text(REPORT, "\n".join(lines) + "\n")
    return storage.uri_of(REPORT)


def stage_table(recipe: RecipeSpec, states: Mapping[str, str],
                records: Mapping[str, StageRecord | None]) -> list[str]:
    """The markdown table: status, steps, samples, time, final losses, eval scores."""
    lines = ["## Stages", "",
             "| stage | kind | status | steps | samples | time (s) | final losses | "
             "eval scores | attempts |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in recipe.topological_order():
        rec = records.get(name)
        state = states.get(name, "not run")
        if rec is None:
            lines.append(f"| {name} | {recipe.stages[name].kind} | {state} | | | | | | |")
            continue
        seconds = (f"{rec.ended_at - rec.started_at:.1f}"
                   if rec.ended_at and rec.started_at else "")
        losses = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(rec.metrics.items())
                           if "loss" in k)
        scores = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(rec.metrics.items())
                           if rec.kind == "eval" and "loss" not in k)
        lines.append(f"| {name} | {rec.kind} | {state} | {rec.steps or 0} | "
                     f"{rec.samples or 0} | {seconds} | {losses} | {scores} | {rec.attempts} |")
    failed = [(n, r.error) for n, r in records.items() if r and r.status == "failed"]
    lines += [""] + [f"- **{n} failed**: `{' / '.join((e or '').splitlines())[:400]}`"
                     for n, e in failed]
    return lines + skipped_lines(records) + [""]


def skipped_lines(records: Mapping[str, StageRecord | None]) -> list[str]:
    """One line per stage that skipped samples: how many, by reason (the rows are named in the
    artifact's stage.json, `skip_examples`)."""
    lines = []
    for name, rec in records.items():
        if rec is not None and rec.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(rec.skipped.items()))
            lines.append(f"- {name} skipped {sum(rec.skipped.values())} samples: {reasons}")
    return lines


def timeline(records: Mapping[str, StageRecord | None]) -> list[str]:
    """Start/end of every timed stage relative to the first start, and pairwise overlaps."""
    timed = {n: r for n, r in records.items() if r and r.started_at and r.ended_at}
    if not timed:
        return []
    t0 = min(r.started_at for r in timed.values())  # type: ignore[type-var]
    lines = ["## Timeline", "", "| stage | start (s) | end (s) | stage task node |",
             "|---|---|---|---|"]
    for name, r in timed.items():
        lines.append(f"| {name} | {r.started_at - t0:.1f} | {r.ended_at - t0:.1f} | "
                     f"{(r.node_id or '')[:12]} |")
    names = list(timed)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = timed[a], timed[b]
            overlap = min(ra.ended_at, rb.ended_at) - max(ra.started_at, rb.started_at)
            if overlap > 0:
                lines.append(f"\n{a} and {b} overlapped for {overlap:.1f} s.")
    return lines + [""]


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_history(storage: RunStorage, name: str, identity: str) -> History:
    """Per-step scalar series of one stage: tag -> [(step, value)].

    Args:
        storage: the run storage.
        name: the stage.
        identity: its identity.

    Returns:
        Series from the stage's metrics jsonl and its TensorBoard event files.
    """
    key = stage_key(name, identity)
    series: History = {}
    rel = f"metrics/{key}.jsonl"
    if storage.exists(rel):
        for line in storage.read_text(rel).splitlines():
            row = json.loads(line)
            for tag, value in row.items():
                if tag != "step" and isinstance(value, (int, float)):
                    series.setdefault(tag, []).append((int(row["step"]), float(value)))
    # TensorBoard files repeat what the history holds: read them only when there is none.
    if storage.is_local and not any("loss" in tag for tag in series):
        for sub in (f"tensorboard/{key}", train_rel(name, identity)):
            for tag, points in _tensorboard_scalars(storage.local_path(sub)).items():
                series.setdefault(tag, points)
    return series


def _tensorboard_scalars(root: Path) -> History:
    if not root.is_dir():
        return {}
    event_dirs = sorted({p.parent for p in root.rglob("*tfevents*")})
    if not event_dirs:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: History = {}
    for directory in event_dirs:
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {t: sorted(p) for t, p in out.items()}


def plot_losses(histories: Mapping[str, History]) -> bytes | None:
    """One PNG with a panel per stage of its loss-like series, or None if there is none.

    Args:
        histories: stage -> its series.

    Returns:
        PNG bytes. One figure for all stages: a savefig costs ~1 s on a small machine.
    """
    panels = {name: {t: p for t, p in series.items() if "loss" in t and p}
              for name, series in histories.items()}
    panels = {name: losses for name, losses in panels.items() if losses}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.4 * len(panels)), squeeze=False)
    for ax, (name, losses) in zip(axes[:, 0], panels.items(), strict=True):
        for tag, points in sorted(losses.items()):
            ax.plot([s for s, _ in points], [v for _, v in points], label=tag, marker=".")
        ax.set_title(name, fontsize="small")
        ax.set_ylabel("loss", fontsize="small")
        ax.legend(fontsize="x-small")
    axes[-1, 0].set_xlabel("step")
    fig.subplots_adjust(hspace=0.6, left=0.12, right=0.97, top=0.95, bottom=0.08)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def image_grid(images: list[bytes], columns: int = 4) -> bytes:
    """Tile encoded images into one PNG grid (each cell the size of the first image)."""
    from PIL import Image

    tiles = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    grid = Image.new("RGB", (width * min(columns, len(tiles)), height * rows), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile.resize((width, height)), ((i % columns) * width, (i // columns) * height))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def plot_sections(storage: RunStorage, recipe: RecipeSpec, ids: Mapping[str, str],
                  records: Mapping[str, StageRecord | None]) -> list[str]:
    """Write plots/*.png and return the report lines that embed them."""
    histories = {}
    for name in recipe.topological_order():
        rec = records.get(name)
        if rec is not None and rec.status == "done" and rec.kind == "train":
            histories[name] = load_history(storage, name, ids[name])
    lines = [*loss_trend_table(histories), "## Loss curves", ""]
    png = plot_losses(histories)
    if png:
        storage.write_bytes(LOSS_PLOT, png)
        lines.append(f"![losses]({LOSS_PLOT})")
    missing = [n for n, h in histories.items() if not any("loss" in t for t in h)]
    lines += [f"- {n}: no per-step loss history recorded" for n in missing]
    return lines + ["", *_grids(storage, recipe, ids, records)]


def _grids(storage: RunStorage, recipe: RecipeSpec, ids: Mapping[str, str],
           records: Mapping[str, StageRecord | None]) -> list[str]:
    lines = []
    for name in recipe.topological_order():
        rec = records.get(name)
        if rec is None or rec.status != "done" or rec.kind != "eval":
            continue
        rel = artifact_rel(name, ids[name])
        found = [f for f in storage.list_files(rel) if f.lower().endswith((".png", ".jpg"))]
        if GRID_FILE in found:  # the eval's own grid (captions, seeds): better than re-tiling
            storage.write_bytes(f"plots/{name}_grid.png", storage.read_bytes(f"{rel}/{GRID_FILE}"))
        elif found:
            images = [storage.read_bytes(f"{rel}/{f}") for f in found[:GRID_MAX_IMAGES]]
            storage.write_bytes(f"plots/{name}_grid.png", image_grid(images))
        if found:
            lines += [f"## Generated images: {name} ({recipe.stages[name].eval.model})", "",
                      f"![{name}](plots/{name}_grid.png)", ""]
    return lines
