"""Per-rank training datasets with a deterministic split, rebuilt from the latest checkpoint.

`dreamray.data.pipeline` turns chunks of stream positions into records. Here the chunks are
numbered absolutely (chunk a = positions [a * chunk_size, (a + 1) * chunk_size)) and dealt
round-robin: rank r reads the chunks a with a % world_size == r, in order. Unlike
`streaming_split`, which hands blocks to whichever worker asks first, this makes "which rank
trains on which sample, in which order" a function of the stream alone, so a resumed run feeds
every rank exactly the batches the uninterrupted run would have (the loss after a resume is the
loss the uninterrupted run had at that step), and per-rank RNG state stays meaningful.

`RankDatasetFactory` is handed to Ray Train as a callable dataset: Ray calls it each time it
(re)starts the worker group, in the controller, so a gang restarted after a worker failure reads
the data position of the checkpoint it is about to restore (`Result.from_path` reads the same
checkpoint-manager snapshot the controller restores from; `usable_checkpoint` passes over a
damaged latest one exactly as the restoring workers do).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dreamray.config.specs import TrainStageSpec
from dreamray.data.pipeline import (
    DEFAULT_CHUNK_SIZE,
    StagePlan,
    index_sources,
    map_chunks,
)

DATASET_PREFIX = "train_"


def dataset_name(rank: int) -> str:
    """The Ray Train dataset name of one rank's data."""
    return f"{DATASET_PREFIX}{rank}"


class RankPlan(StagePlan):
    """A `StagePlan` whose chunk numbers are absolute, so they do not move with the resume
    point."""

    def positions(self, chunk: int) -> tuple[int, int]:
        """The [start, stop) positions of absolute chunk `chunk`."""
        lo = chunk * self.chunk_size
        return max(lo, self.start), min(lo + self.chunk_size, self.stop)

    def rank_chunks(self, rank: int, world_size: int) -> list[int]:
        """The absolute chunks of `rank` from the resume point to the plan's end."""
        first, last = self.start // self.chunk_size, math.ceil(self.stop / self.chunk_size)
        return [c for c in range(first, last) if c % world_size == rank]


CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's dir names: checkpoint_<timestamp>, sortable


def read_stored_json(checkpoint: Any, rel: str) -> Any:
    """One small JSON file of a Ray checkpoint, read where it is stored (local or object
    storage) without downloading the checkpoint.

    Args:
        checkpoint: a `ray.train.Checkpoint`.
        rel: the file's path inside it (e.g. `meta.json`).

    Returns:
        The parsed JSON.
    """
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{rel}") as f:
        return json.loads(f.read().decode())


def stored_checkpoint_problems(checkpoint: Any) -> list[str]:
    """`dreamray.train.checkpoint.checkpoint_problems` of a Ray checkpoint where it is stored
    (local or object storage), reading only its listings, never its weights."""
    from pyarrow.fs import FileSelector, FileType

    from dreamray.train.checkpoint import checkpoint_problems

    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    infos = fs.get_file_info(FileSelector(root, recursive=True))
    sizes = {i.path[len(root) + 1:]: i.size for i in infos if i.type == FileType.File}

    def read_text(rel: str) -> str:
        with fs.open_input_stream(f"{root}/{rel}") as f:
            return f.read().decode()

    return checkpoint_problems(sizes, read_text)


def usable_checkpoint(latest: Any) -> tuple[Any, list[str]]:
    """The newest usable checkpoint no newer than `latest` (Ray's latest registered one).

    The worker (restoring) and the driver (building the datasets, deciding whether to train)
    both choose with this, so they agree on the resume point.

    Args:
        latest: a `ray.train.Checkpoint` or None.

    Returns:
        ``(checkpoint or None, passed_over)``: the unusable newer ones, newest first, each as
        ``"<dir name>: <problems>"``.

    Raises:
        NoUsableCheckpointError: the run has checkpoints, none of them usable.
    """
    if latest is None:
        return None, []
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    from dreamray.train.checkpoint import NoUsableCheckpointError

    fs, path = latest.filesystem, latest.path.rstrip("/")
    parent, newest = path.rsplit("/", 1)
    names = sorted((i.base_name for i in fs.get_file_info(FileSelector(parent))
                    if i.type == FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
                    and i.base_name <= newest), reverse=True)
    passed_over = []
    for name in names:
        candidate = Checkpoint(f"{parent}/{name}", filesystem=fs)
        problems = stored_checkpoint_problems(candidate)
        if not problems:
            return candidate, passed_over
        passed_over.append(f"{name}: {'; '.join(problems)}")
    raise NoUsableCheckpointError(f"{parent}: no usable checkpoint: {' | '.join(passed_over)}")


def latest_checkpoint(run_dir: str) -> Any:
    """The latest registered Ray Train checkpoint of a run, or None.

    Args:
        run_dir: `storage_path/run_name`.

    Returns:
        A `ray.train.Checkpoint` or None (no run yet, or no checkpoint).
    """
    from ray.train import Result

    try:
        return Result.from_path(run_dir).checkpoint
    except RuntimeError:  # no run folder, or no checkpoint-manager snapshot yet
        return None


def data_state_of(checkpoint: Any) -> Any:
    """The merged `DataState` of a checkpoint (None without checkpoint or data files)."""
    from dreamray.data.progress import load_data_state
    from dreamray.train.checkpoint import DATA_DIR

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        data_dir = Path(d) / DATA_DIR
        return load_data_state(data_dir) if data_dir.is_dir() else None


def build_rank_dataset(
    stage: TrainStageSpec,
    tokenizer_dir: str,
    rank: int,
    world_size: int,
    resume: Any = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Any:
    """One rank's dataset of records (lazy).

    Args:
        stage: the train stage spec.
        tokenizer_dir: the tokenizer dir of the stage's init LLM.
        rank: the rank.
        world_size: ranks of the gang.
        resume: the merged `DataState` to continue from (its consumed positions are left out).
        chunk_size: positions per chunk.

    Returns:
        A `ray.data.Dataset` in `dreamray.data.records.RECORD_SCHEMA`, in stream order.

    Raises:
        ValueError: `resume` belongs to another stream.
    """
    import ray.data

    plan = RankPlan(stage, tokenizer_dir, index_sources(stage.data), resume, chunk_size)
    if resume is not None and resume.fingerprint != plan.fingerprint:
        raise ValueError(
            f"cannot resume: checkpoint stream {resume.fingerprint} != {plan.fingerprint} "
            "(sources, weights, seed or shard files changed)"
        )
    chunks = plan.rank_chunks(rank, world_size)
    ds = ray.data.from_items([{"id": c} for c in chunks], override_num_blocks=max(1, len(chunks)))
    return map_chunks(ds, plan, stage.data.map_workers_per_rank)


class RankDatasetFactory:
    """A picklable callable: rank r's dataset at the latest checkpoint of the run."""

    def __init__(self, stage: TrainStageSpec, tokenizer_dir: str, run_dir: str, rank: int):
        """Args:
        stage: the stage spec (paths concrete).
        tokenizer_dir: the tokenizer dir of the stage's init LLM.
        run_dir: `storage_path/run_name`, where the checkpoints are.
        rank: the rank this dataset feeds.
        """
        self.stage, self.tokenizer_dir = stage, tokenizer_dir
        self.run_dir, self.rank = run_dir, rank

    def __call__(self) -> Any:
        """Build the dataset from the run's latest checkpoint (or from the start)."""
        checkpoint, _ = usable_checkpoint(latest_checkpoint(self.run_dir))
        resume = data_state_of(checkpoint)
        world = self.stage.scaling.num_workers
        return build_rank_dataset(self.stage, self.tokenizer_dir, self.rank, world, resume)
