"""The stage's training data on Ray Data: weighted sources -> built, collate-ready records.

Driver side: `dreamray.orchestration.train_data` builds one dataset per rank from this
module's `StagePlan` and `map_chunks` (rank r reads its own chunks: nothing is split across
ranks); the launcher hands them to Ray Train as `train_<rank>`, and
`dreamray.orchestration.rank_ingest` runs each one outside the training process.
`build_stage_dataset` is the whole stream as one dataset.

Worker side (`dreamray.train.feed.DataFeed`, with `dreamray.data.batches`)::

    spec = make_collate_spec(stage, tokenizer_dir)
    progress = DataProgress(stage_fingerprint(stage.data), resume=<merged state or None>, rank)
    shard = session.dataset_shard()   # this rank's `train_<rank>`, from Ray Train
    for batch, info in iter_train_batches(shard, spec, micro_batch_size, num_batches, progress):
        ...  # batch: the batch contract; info: dreamray.data.progress.BatchInfo
    # at a checkpoint: save_data_state(rank_dir, rank, progress.state)

The dataset is a *plan*: a dataset of chunk numbers, where chunk c stands for `chunk_size`
consecutive stream positions; `map_batches` turns a chunk into records: which source and row
each position draws (`dreamray.data.mixing`), reading only those row groups and only the needed
columns with pyarrow, building the sequence, then decoding and transforming only the images
the sequence kept (`sequence`, `transforms`). Images stay encoded bytes until then. Skipped
samples stay in the stream as records with a `skip_reason`, so they are counted and resumed
like any other position. Order is preserved (same seed, same record order).

Epoch: `data.num_samples` trainable samples. The plan holds more positions than that
(`plan_length`) so that skips do not starve the workers; the train loop asks each worker for a
fixed number of micro-batches, which keeps the ranks in lock step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dreamray.config.specs import DataSpec, TrainStageSpec
from dreamray.data.mixing import (
    REQUIRED_COLUMNS,
    DrawCounter,
    MixSchedule,
    SourceIndex,
    index_source,
    locate_draws,
)
from dreamray.data.packing import stage_pack_length
from dreamray.data.progress import DataState, RangeSet
from dreamray.data.records import make_record, records_table, skipped_record
from dreamray.data.sequence import (
    SKIP_IMAGE,
    SequenceBuilder,
    SequenceLayout,
    SkipSample,
    load_stage_tokenizer,
)
from dreamray.data.stage_features import StageFeatures

# Positions per map call: smaller chunks leave the map CPUs idle for longer between calls,
# larger ones cost more CPU per sample (bigger blocks through the object store) and were slower
# overall (benchmarks/data_throughput.py).
DEFAULT_CHUNK_SIZE = 64
_MAX_PLAN_BLOCKS = 4096
# CPUs of one map actor (Ray Data's default, spelled out because the DAG runner must keep this
# much free per actor beside a stage's gang: `dreamray.orchestration.resources.data_bundles`)
MAP_ACTOR_CPUS = 1.0
# Chunks queued on each map actor besides the one it builds: it starts the next as soon as it
# finishes. A task pool cannot queue: Ray Data's executor notices a finished task only on its
# next poll, and the task's CPU sits idle until then.
CHUNKS_QUEUED_PER_ACTOR = 2
_ROW_GROUP_CACHE = 4  # row groups kept per process: consecutive chunks reuse the same groups
FEATURE_ROW = "_features"  # a planned row's precomputed features (`StagePlan.rows`)


def stage_fingerprint(data: DataSpec, sources: list[SourceIndex] | None = None) -> str:
    """Identity of a stage's stream: same fingerprint, same sample at every position.

    Args:
        data: the stage's data spec.
        sources: the indexed sources (their file names and row counts join the identity).

    Returns:
        A short hex digest.
    """
    sources = sources if sources is not None else index_sources(data)
    ident = {
        "seed": data.seed,
        "sources": [
            [s.name, w.weight, s.num_rows, [f.rsplit("/", 1)[-1] for f in s.files]]
            for s, w in zip(sources, data.sources, strict=True)
        ],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def plan_length(stage: TrainStageSpec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Positions in a stage's plan: enough for `data.num_samples` trainable samples.

    The surplus covers the skips the spec allows, and the records that are in flight when the
    workers stop: each worker may hold a block (one chunk) plus prefetched batches that it never
    consumes.

    Args:
        stage: the train stage spec (data and number of workers).
        chunk_size: positions per chunk.

    Returns:
        The number of positions.
    """
    data = stage.data
    skip = min(data.max_skip_fraction, 0.5)  # past 50 % skipped the run stops anyway
    in_flight = (
        2 * stage.scaling.num_workers * (chunk_size + 4 * stage.deepspeed.micro_batch_per_gpu)
    )
    return math.ceil(data.num_samples / (1.0 - skip)) + max(64, in_flight)


def index_sources(data: DataSpec) -> list[SourceIndex]:
    """Index every source of a data spec (parquet footers only).

    Args:
        data: the data spec.

    Returns:
        One `SourceIndex` per source, in spec order.
    """
    return [index_source(s.name, s.path) for s in data.sources]


class StagePlan:
    """Everything a map actor needs to turn chunk numbers into records (pickled to it once)."""

    def __init__(
        self,
        stage: TrainStageSpec,
        tokenizer_dir: str,
        sources: list[SourceIndex],
        resume: DataState | None,
        chunk_size: int,
    ) -> None:
        data, model = stage.data, stage.model
        self.tokenizer_dir = str(tokenizer_dir)
        self.vision_path, self.diffusion_path = model.vision_path, model.diffusion_path
        self.num_queries, self.max_length = model.num_dream_queries, model.max_length
        self.mode, self.seed, self.random_flip = data.mode, data.seed, data.random_flip
        self.sources = sources
        self.fingerprint = stage_fingerprint(data, sources)
        self.stop = plan_length(stage, chunk_size)
        self.done = resume.consumed if resume is not None else RangeSet()
        self.start = min(self.done.prefix_end(), self.stop)
        self.chunk_size = chunk_size
        self.schedule = MixSchedule([s.weight for s in data.sources], data.seed)
        self.counter = DrawCounter(self.schedule, self.stop)
        # on the driver, before any actor starts: a packing length too short is a config error,
        # a missing or stale feature shard is refused
        stage_pack_length(stage)
        self.features = None
        if data.features is not None:
            self.features = StageFeatures(data.features, model,
                                          list(zip(sources, data.sources, strict=True)))

    @property
    def num_chunks(self) -> int:
        """Chunks from the resume point to the plan's end."""
        return math.ceil((self.stop - self.start) / self.chunk_size)

    def positions(self, chunk: int) -> tuple[int, int]:
        """The [start, stop) positions of a chunk."""
        lo = self.start + chunk * self.chunk_size
        return lo, min(lo + self.chunk_size, self.stop)

    def rows(self, chunk: int) -> list[tuple[int, str, dict, str]]:
        """(position, source name, unified row, origin) of every not-yet-consumed position of a
        chunk; origin is ``"<shard file> row <n>"``. On precomputed features, each row carries
        its feature row under FEATURE_ROW.

        Args:
            chunk: chunk number (0 = the resume point).

        Returns:
            The rows in position order (images still encoded).
        """
        lo, hi = self.positions(chunk)
        src, draws = self.schedule.draws(lo, hi, self.counter.at(lo))
        rows: list[tuple[int, str, dict, str] | None] = [None] * (hi - lo)
        for s, index in enumerate(self.sources):
            (where,) = np.nonzero(src == s)
            if not len(where):
                continue
            groups, offsets = locate_draws(index, draws[where], self.seed)
            for i, g, r in zip(where, groups, offsets, strict=True):
                shard = index.files[index.group_file[g]]
                row = _read_group(shard, int(index.group_index[g])).slice(int(r), 1).to_pylist()[0]
                if self.features is not None:
                    row[FEATURE_ROW] = self.features.row(
                        index.name, shard, index.file_row(int(g), int(r)), row["id"])
                rows[i] = (lo + int(i), index.name, row, index.origin(int(g), int(r)))
        return [row for row in rows if row is not None and row[0] not in self.done]


def load_builder(plan: StagePlan) -> tuple[SequenceBuilder, Any]:
    """The sequence builder and image transforms of a plan (tokenizer, processors: seconds).

    Args:
        plan: the stage plan.

    Returns:
        (`SequenceBuilder`, `dreamray.data.transforms.ImageTransforms`).
    """
    from dreamray.data.transforms import ImageTransforms

    layout = SequenceLayout.from_model(plan.vision_path, plan.num_queries, plan.max_length)
    tokenizer = load_stage_tokenizer(plan.tokenizer_dir)
    return (
        SequenceBuilder(tokenizer, layout, plan.mode, plan.seed),
        ImageTransforms(plan.vision_path, plan.diffusion_path, plan.random_flip, plan.seed),
    )


@functools.lru_cache(maxsize=_ROW_GROUP_CACHE)
def _read_group(path: str, group: int) -> pa.Table:
    # column pruning: image_sim and source are never read
    return pq.ParquetFile(path).read_row_group(group, columns=list(REQUIRED_COLUMNS))


def build_record(
    builder: SequenceBuilder, transforms: Any, position: int, source: str, row: dict,
    origin: str = "", features: StageFeatures | None = None,
) -> dict[str, Any]:
    """One unified row -> a record (a skipped record when it cannot be trained on).

    Args:
        builder: the stage's sequence builder.
        transforms: the stage's `ImageTransforms`.
        position: the stream position.
        source: the source name.
        row: the unified row.
        origin: where the row is (`SourceIndex.origin`), kept on a skipped record.
        features: on precomputed features: the stage's features; the record's payloads are
            then the row's features (FEATURE_ROW) rather than pixels.

    Returns:
        A record (`dreamray.data.records`).
    """
    try:
        built = builder.build(row)
    except SkipSample as skip:
        return skipped_record(position, row["id"], source, skip.reason, origin)
    try:
        if features is not None:
            clip, sd = features.select(row[FEATURE_ROW], built.clip_images, built.sd_images)
        else:
            clip, sd = transforms.sample_pixels(
                row["id"], row["images"], built.clip_images, built.sd_images
            )
    except Exception:  # noqa: BLE001 - PIL signals bad bytes with a zoo of exception types
        return skipped_record(position, row["id"], source, SKIP_IMAGE, origin)
    return make_record(
        position, row["id"], source, built.input_ids, built.labels, clip, sd, built.images_dropped
    )


class ChunkBuilder:
    """The `map_batches` callable class: one per map actor, which loads the tokenizer and
    image transforms once, then builds chunk after chunk."""

    def __init__(self, plan: StagePlan) -> None:
        """Args:
        plan: the stage plan (pickled to the actor once).
        """
        self.plan = plan
        self.builder, self.transforms = load_builder(plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Chunk numbers (column ``id``) -> records.

        Args:
            batch: a numpy batch of chunk numbers.

        Returns:
            A table in `records.RECORD_SCHEMA`, positions in increasing order.
        """
        records = [
            build_record(self.builder, self.transforms, position, source, row, origin,
                         self.plan.features)
            for chunk in batch["id"]
            for position, source, row, origin in self.plan.rows(int(chunk))
        ]
        return records_table(records)


def map_chunks(chunks: Any, plan: StagePlan, map_workers: int) -> Any:
    """Chunk numbers -> records on a fixed pool of map actors, record order kept.

    Args:
        chunks: a `ray.data.Dataset` with one chunk number (column ``id``) per row.
        plan: the stage plan.
        map_workers: actors in the pool (each takes MAP_ACTOR_CPUS for the dataset's lifetime).

    Returns:
        The lazy dataset of records (`dreamray.data.records.RECORD_SCHEMA`).
    """
    import ray.data

    # deterministic record order for a seed; the resume bookkeeping does not rely on it
    chunks.context.execution_options.preserve_order = True
    return chunks.map_batches(
        ChunkBuilder,
        fn_constructor_kwargs={"plan": plan},
        batch_size=1,
        batch_format="numpy",
        num_cpus=MAP_ACTOR_CPUS,
        compute=ray.data.ActorPoolStrategy(
            size=map_workers, max_tasks_in_flight_per_actor=1 + CHUNKS_QUEUED_PER_ACTOR
        ),
    )


def build_stage_dataset(
    stage: TrainStageSpec,
    tokenizer_dir: str,
    resume: DataState | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    map_workers: int | None = None,
) -> Any:
    """The stage's training dataset (lazy; nothing runs until it is iterated).

    Args:
        stage: the train stage spec.
        tokenizer_dir: tokenizer dir (special tokens are added when missing).
        resume: the merged data state of the checkpoint being resumed (`load_data_state`);
            its consumed positions are left out. None: start from position 0.
        chunk_size: positions per map call.
        map_workers: map actors (None: the stage's `map_actors`). Each new actor pays for
            importing torch and transformers once.

    Returns:
        A `ray.data.Dataset` of records (`dreamray.data.records` RECORD_FIELDS).

    Raises:
        ValueError: `resume` belongs to another stream (the data spec or shards changed).
        FileNotFoundError: a source dir without parquet files.
    """
    import ray.data

    sources = index_sources(stage.data)
    plan = StagePlan(stage, tokenizer_dir, sources, resume, chunk_size)
    if resume is not None and resume.fingerprint != plan.fingerprint:
        raise ValueError(
            f"cannot resume: checkpoint stream {resume.fingerprint} != {plan.fingerprint} "
            "(sources, weights, seed or shard files changed)"
        )
    blocks = max(1, min(plan.num_chunks, _MAX_PLAN_BLOCKS))
    ds = ray.data.range(plan.num_chunks, override_num_blocks=blocks)
    return map_chunks(ds, plan, stage.map_actors if map_workers is None else map_workers)

