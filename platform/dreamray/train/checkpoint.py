"""One rank's part of a resumable checkpoint, and restoring from a merged one.

Every rank writes into its own local directory; Ray Train merges the rank directories into one
checkpoint, so every file name is unique across ranks:

    meta.json                         rank 0: step, tag, world size, ZeRO stage, precision
    ds/<tag>/...                      DeepSpeed: each rank's ZeRO shards (+ model states)
    ranks/rank_<r>/train_state.json   loop counters of rank r
    ranks/rank_<r>/rng_state.pt       RNG (torch, CUDA, Python, NumPy) + scheduler state
    data/data_state.rank<r>.json      rank r's consumed data positions (`dreamray.data.progress`)
    ranks/rank_<r>/files.json         written last by rank r: the size of every file it wrote

A checkpoint is usable when `meta.json` is there and every rank's files are there at the sizes
their `files.json` lists (`checkpoint_problems`): a truncated upload, a file lost on the storage
or a rank that died mid-write makes it unusable, and resume falls back to an older one.

Frozen parameters are left out of the DeepSpeed files (`exclude_frozen_parameters`): they are
rebuilt from the stage's init on resume, identically.

Granularity: optimizer-step boundaries (the loop only checkpoints between steps), exact: model,
optimizer, schedule, RNG and data position are restored as they were after that step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamray.train.state import TrainState, read_rank_state, restore_rng, write_rank_state

META_FILE = "meta.json"
DS_DIR = "ds"
RANKS_DIR = "ranks"
DATA_DIR = "data"
LISTING_FILE = "files.json"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written by a different gang (world size, ZeRO stage or precision)."""


class NoUsableCheckpointError(RuntimeError):
    """A run has checkpoints, but none whose files are all there."""


@dataclass(frozen=True)
class Restored:
    """What `restore_checkpoint` gives back."""

    state: TrainState
    data_state: Any  # dreamray.data.progress.DataState | None
    rng: dict[str, Any]


def checkpoint_tag(step: int) -> str:
    """DeepSpeed tag of the checkpoint after `step` optimizer steps."""
    return f"step_{step:08d}"


def _rank_dir(root: Path, rank: int) -> Path:
    return root / RANKS_DIR / f"rank_{rank}"


def save_checkpoint(
    root: Path,
    engine: Any,
    scheduler: Any,
    state: TrainState,
    data_state: Any,
    rank: int,
    meta: dict[str, Any],
) -> Path:
    """Write this rank's share of the checkpoint after `state.step` (collective: all ranks).

    Args:
        root: this rank's fresh local directory.
        engine: the DeepSpeed engine.
        scheduler: the lr scheduler (its state goes with the RNG).
        state: the loop counters.
        data_state: this rank's `DataState`, or None when batches do not come from the pipeline.
        rank: this rank.
        meta: gang-wide facts (world_size, zero_stage, precision) checked on restore.

    Returns:
        `root`.
    """
    from dreamray.data.progress import save_data_state

    tag = checkpoint_tag(state.step)
    # DeepSpeed creates the tag dir on rank 0 only; every rank writes into its own root here.
    (root / DS_DIR / tag).mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(
        str(root / DS_DIR), tag=tag, save_latest=False, exclude_frozen_parameters=True
    )
    write_rank_state(_rank_dir(root, rank), state, {"scheduler": scheduler.state_dict()})
    if data_state is not None:
        save_data_state(root / DATA_DIR, rank, data_state)
    if rank == 0:
        payload = {**meta, "step": state.step, "tag": tag}
        (root / META_FILE).write_text(json.dumps(payload, sort_keys=True))
    return root


def write_listing(root: Path, rank: int) -> Path:
    """Record the size of every file under this rank's checkpoint dir (call it last).

    Args:
        root: this rank's local checkpoint directory, fully written.
        rank: this rank.

    Returns:
        The listing's path.
    """
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size
             for p in sorted(root.rglob("*")) if p.is_file()}
    target = _rank_dir(root, rank) / LISTING_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(sizes, sort_keys=True))
    return target


def checkpoint_problems(sizes: Mapping[str, int], read_text: Callable[[str], str]) -> list[str]:
    """Why a merged checkpoint cannot be restored (empty: it can).

    Storage-agnostic: works on a listing of the checkpoint's files, so that a checkpoint in
    object storage is judged without downloading it.

    Args:
        sizes: every file of the checkpoint, relative path -> size in bytes.
        read_text: reads one of those files (small ones only: meta and listings).

    Returns:
        One line per problem (a missing or truncated file, an unreadable meta or listing).
    """
    if META_FILE not in sizes:
        return [f"{META_FILE} missing"]
    try:
        world_size = int(json.loads(read_text(META_FILE))["world_size"])
    except (ValueError, KeyError, TypeError) as err:
        return [f"{META_FILE} unreadable ({err!r})"]
    problems: list[str] = []
    for rank in range(world_size):
        listing = f"{RANKS_DIR}/rank_{rank}/{LISTING_FILE}"
        if listing not in sizes:
            problems.append(f"{listing} missing")
            continue
        try:
            written = json.loads(read_text(listing))
        except ValueError as err:
            problems.append(f"{listing} unreadable ({err})")
            continue
        problems += [_size_problem(rel, sizes.get(rel), size) for rel, size in written.items()
                     if sizes.get(rel) != size]
    return problems


def _size_problem(rel: str, found: int | None, written: int) -> str:
    if found is None:
        return f"{rel} missing"
    return f"{rel} is {found} bytes, {written} were written"


def local_checkpoint_problems(root: Path) -> list[str]:
    """`checkpoint_problems` of a checkpoint in a local directory."""
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size
             for p in root.rglob("*") if p.is_file()}
    return checkpoint_problems(sizes, lambda rel: (root / rel).read_text())


def read_meta(root: Path) -> dict[str, Any]:
    """The checkpoint's `meta.json`."""
    return json.loads((root / META_FILE).read_text())


def restore_checkpoint(
    root: Path, engine: Any, scheduler: Any, rank: int, meta: dict[str, Any]
) -> Restored:
    """Load model, optimizer, scheduler and this rank's counters (collective: all ranks).

    The RNG state is returned, not applied: the caller restores it right before the first step,
    after everything else that draws random numbers at start-up.

    Args:
        root: the merged checkpoint directory.
        engine: the DeepSpeed engine, built as for a fresh start.
        scheduler: the lr scheduler.
        rank: this rank.
        meta: this gang's world_size / zero_stage / precision, which must match.

    Returns:
        The counters, the merged data state (None if there is none) and the RNG state.

    Raises:
        CheckpointMismatchError: if the checkpoint was written by a different gang.
    """
    from dreamray.data.progress import load_data_state

    saved = read_meta(root)
    diff = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
    if diff:
        raise CheckpointMismatchError(
            f"{root}: written by a different gang (saved, now): {diff}; ZeRO shards cannot be "
            "re-partitioned here: restore the same scaling/deepspeed settings"
        )
    engine.load_checkpoint(
        str(root / DS_DIR),
        tag=saved["tag"],
        load_module_strict=False,  # frozen parameters are not in the files
        load_optimizer_states=True,
        load_lr_scheduler_states=False,  # ours is restored below
    )
    state, extra = read_rank_state(_rank_dir(root, rank))
    scheduler.load_state_dict(extra["scheduler"])
    data_dir = root / DATA_DIR
    data_state = load_data_state(data_dir) if data_dir.is_dir() else None
    return Restored(state=state, data_state=data_state, rng=extra["rng"])


def apply_rng(restored: Restored) -> None:
    """Restore the RNG saved with the checkpoint (the last thing before the first step)."""
    restore_rng(restored.rng)
