"""The stage's training data on Ray Data: weighted sources -> built, collate-ready records.

Driver side::

    ds = build_stage_dataset(stage, tokenizer_dir, resume=load_data_state(ckpt_dir))
    TorchTrainer(..., datasets={"train": ds})   # Ray Train streaming_splits it to the workers

Worker side::

    spec = make_collate_spec(stage, tokenizer_dir)
    progress = DataProgress(stage_fingerprint(stage.data), resume=<merged state or None>, rank)
    shard = ray.train.get_dataset_shard("train")
    for batch, info in iter_train_batches(shard, spec, micro_batch_size, num_batches, progress):
        ...  # batch: the batch contract; info: dreamray.data.progress.BatchInfo
    # at a checkpoint: save_data_state(rank_dir, rank, progress.state)

The dataset is a *plan*: `ray.data.range(n_chunks)` where chunk c stands for `chunk_size`
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
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dreamray.config.specs import DataSpec, TrainStageSpec
from dreamray.data.collate import CollateSpec, collate, make_record, skipped_record
from dreamray.data.mixing import (
    REQUIRED_COLUMNS,
    DrawCounter,
    MixSchedule,
    SourceIndex,
    index_source,
    locate_draws,
)
from dreamray.data.progress import BatchInfo, DataProgress, DataState, RangeSet
from dreamray.data.sequence import SKIP_IMAGE, SequenceBuilder, SequenceLayout, SkipSample

DEFAULT_CHUNK_SIZE = 32  # positions per map call: ~1 s of decoding at 512 px, small blocks
_MAX_PLAN_BLOCKS = 4096
_ROW_GROUP_CACHE = 4  # row groups kept per process: consecutive chunks reuse the same groups
RECORD_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("skip_reason", pa.string()),
        ("input_ids", pa.binary()),
        ("labels", pa.binary()),
        ("clip_pixels", pa.binary()),
        ("n_clip", pa.int32()),
        ("sd_pixels", pa.binary()),
        ("n_sd", pa.int32()),
        ("images_dropped", pa.int32()),
        ("num_tokens", pa.int32()),
    ]
)


class DataExhaustedError(RuntimeError):
    """A worker's shard ended before it delivered the micro-batches it was asked for."""


def load_stage_tokenizer(tokenizer_dir: str) -> Any:
    """Load a tokenizer and add DreamLLM's special tokens when they are missing.

    Args:
        tokenizer_dir: a dir with HF tokenizer files (the base LLM's or a stage artifact's).

    Returns:
        The tokenizer (token ids are deterministic: the add order is fixed).
    """
    from transformers import AutoTokenizer

    from dreamray.model.tokens import add_dreamllm_tokens

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    add_dreamllm_tokens(tokenizer)
    return tokenizer


def stage_fingerprint(data: DataSpec, sources: list[SourceIndex] | None = None) -> str:
    """Identity of a stage's stream: same fingerprint, same sample at every position.

    Args:
        data: the stage's data spec.
        sources: the indexed sources (their file names and row counts join the identity).

    Returns:
        A short hex digest.
    """
    sources = sources if sources is not None else _index_sources(data)
    ident = {
        "seed": data.seed,
        "sources": [
            [s.name, w.weight, s.num_rows, [f.rsplit("/", 1)[-1] for f in s.files]]
            for s, w in zip(sources, data.sources, strict=True)
        ],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def plan_length(data: DataSpec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Positions in a stage's plan: enough for num_samples trainable ones at the allowed skips.

    Args:
        data: the data spec.
        chunk_size: positions per chunk (the surplus covers a few chunks of skew).

    Returns:
        The number of positions.
    """
    skip = min(data.max_skip_fraction, 0.5)  # past 50 % skipped the run stops anyway
    return math.ceil(data.num_samples / (1.0 - skip)) + max(64, 2 * chunk_size)


def _index_sources(data: DataSpec) -> list[SourceIndex]:
    return [index_source(s.name, s.path) for s in data.sources]


class StagePlan:
    """Everything a map task needs to turn chunk numbers into records (pickled to tasks)."""

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
        self.stop = plan_length(data, chunk_size)
        self.done = resume.consumed if resume is not None else RangeSet()
        self.start = min(self.done.prefix_end(), self.stop)
        self.chunk_size = chunk_size
        self.schedule = MixSchedule([s.weight for s in data.sources], data.seed)
        self.counter = DrawCounter(self.schedule, self.stop)

    @property
    def num_chunks(self) -> int:
        """Chunks from the resume point to the plan's end."""
        return math.ceil((self.stop - self.start) / self.chunk_size)

    def positions(self, chunk: int) -> tuple[int, int]:
        """The [start, stop) positions of a chunk."""
        lo = self.start + chunk * self.chunk_size
        return lo, min(lo + self.chunk_size, self.stop)

    def cache_key(self) -> str:
        """Identifies the heavy per-process objects (tokenizer, transforms) of this plan."""
        return json.dumps(
            [
                self.tokenizer_dir,
                self.vision_path,
                self.diffusion_path,
                self.num_queries,
                self.max_length,
                self.mode,
                self.seed,
                self.random_flip,
            ]
        )


_WORKERS: dict[str, tuple[SequenceBuilder, Any]] = {}


def _worker(plan: StagePlan) -> tuple[SequenceBuilder, Any]:
    """The builder and transforms of a plan, loaded once per process (tasks reuse processes)."""
    key = plan.cache_key()
    if key not in _WORKERS:
        from dreamray.data.transforms import ImageTransforms

        layout = SequenceLayout.from_model(plan.vision_path, plan.num_queries, plan.max_length)
        builder = SequenceBuilder(
            load_stage_tokenizer(plan.tokenizer_dir), layout, plan.mode, plan.seed
        )
        transforms = ImageTransforms(
            plan.vision_path, plan.diffusion_path, plan.random_flip, plan.seed
        )
        _WORKERS[key] = (builder, transforms)
    return _WORKERS[key]


@functools.lru_cache(maxsize=_ROW_GROUP_CACHE)
def _read_group(path: str, group: int) -> pa.Table:
    # column pruning: image_sim and source are never read
    return pq.ParquetFile(path).read_row_group(group, columns=list(REQUIRED_COLUMNS))


def _chunk_rows(plan: StagePlan, chunk: int) -> list[tuple[int, str, dict]]:
    """(position, source name, unified row) of every not-yet-consumed position of a chunk."""
    lo, hi = plan.positions(chunk)
    src, draws = plan.schedule.draws(lo, hi, plan.counter.at(lo))
    rows: list[tuple[int, str, dict] | None] = [None] * (hi - lo)
    for s, index in enumerate(plan.sources):
        (where,) = np.nonzero(src == s)
        if not len(where):
            continue
        groups, offsets = locate_draws(index, draws[where], plan.seed)
        for i, g, r in zip(where, groups, offsets, strict=True):
            table = _read_group(index.files[index.group_file[g]], int(index.group_index[g]))
            rows[i] = (lo + int(i), index.name, table.slice(int(r), 1).to_pylist()[0])
    return [row for row in rows if row is not None and row[0] not in plan.done]


def build_record(
    builder: SequenceBuilder, transforms: Any, position: int, source: str, row: dict
) -> dict[str, Any]:
    """One unified row -> a record (a skipped record when it cannot be trained on).

    Args:
        builder: the stage's sequence builder.
        transforms: the stage's `ImageTransforms`.
        position: the stream position.
        source: the source name.
        row: the unified row.

    Returns:
        A record (`dreamray.data.collate`).
    """
    try:
        built = builder.build(row)
    except SkipSample as skip:
        return skipped_record(position, row["id"], source, skip.reason)
    try:
        clip, sd = transforms.sample_pixels(
            row["id"], row["images"], built.clip_images, built.sd_images
        )
    except Exception:  # noqa: BLE001 - PIL signals bad bytes with a zoo of exception types
        return skipped_record(position, row["id"], source, SKIP_IMAGE)
    return make_record(
        position, row["id"], source, built.input_ids, built.labels, clip, sd, built.images_dropped
    )


def build_chunks(batch: dict[str, np.ndarray], plan: StagePlan) -> pa.Table:
    """The `map_batches` function: chunk numbers (column ``id``) -> records.

    Args:
        batch: a numpy batch of chunk numbers.
        plan: the stage plan.

    Returns:
        A table in RECORD_SCHEMA, positions in increasing order.
    """
    builder, transforms = _worker(plan)
    records = [
        build_record(builder, transforms, position, source, row)
        for chunk in batch["id"]
        for position, source, row in _chunk_rows(plan, int(chunk))
    ]
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def build_stage_dataset(
    stage: TrainStageSpec,
    tokenizer_dir: str,
    resume: DataState | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Any:
    """The stage's training dataset (lazy; nothing runs until it is iterated).

    Args:
        stage: the train stage spec.
        tokenizer_dir: tokenizer dir (special tokens are added when missing).
        resume: the merged data state of the checkpoint being resumed (`load_data_state`);
            its consumed positions are left out. None: start from position 0.
        chunk_size: positions per map call.

    Returns:
        A `ray.data.Dataset` of records (`dreamray.data.collate` RECORD_FIELDS).

    Raises:
        ValueError: `resume` belongs to another stream (the data spec or shards changed).
        FileNotFoundError: a source dir without parquet files.
    """
    import ray.data

    sources = _index_sources(stage.data)
    plan = StagePlan(stage, tokenizer_dir, sources, resume, chunk_size)
    if resume is not None and resume.fingerprint != plan.fingerprint:
        raise ValueError(
            f"cannot resume: checkpoint stream {resume.fingerprint} != {plan.fingerprint} "
            "(sources, weights, seed or shard files changed)"
        )
    blocks = max(1, min(plan.num_chunks, _MAX_PLAN_BLOCKS))
    ds = ray.data.range(plan.num_chunks, override_num_blocks=blocks)
    # deterministic record order for a seed; the resume bookkeeping does not rely on it
    ds.context.execution_options.preserve_order = True
    return ds.map_batches(
        build_chunks, fn_kwargs={"plan": plan}, batch_size=1, batch_format="numpy"
    )


def make_collate_spec(stage: TrainStageSpec, tokenizer_dir: str) -> CollateSpec:
    """The collator's settings for a stage.

    Args:
        stage: the train stage spec.
        tokenizer_dir: the tokenizer dir passed to `build_stage_dataset`.

    Returns:
        Pad id and image shapes.
    """
    from dreamray.data.transforms import ImageTransforms

    tokenizer = load_stage_tokenizer(tokenizer_dir)
    transforms = ImageTransforms(stage.model.vision_path, stage.model.diffusion_path, False, 0)
    return CollateSpec(tokenizer.pad_token_id, transforms.clip_shape, transforms.sd_size)


def _records(shard: Any, batch_size: int, prefetch_batches: int) -> Iterator[dict[str, Any]]:
    for batch in shard.iter_batches(
        batch_size=batch_size, batch_format="numpy", prefetch_batches=prefetch_batches
    ):
        keys = list(batch)
        for i in range(len(batch["position"])):
            yield {k: batch[k][i] for k in keys}


def _batch_info(records: list[dict], skipped: list[dict]) -> BatchInfo:
    return BatchInfo(
        positions=[int(r["position"]) for r in records],
        sample_ids=[str(r["id"]) for r in records],
        sources=[str(r["source"]) for r in records],
        num_clip_images=sum(int(r["n_clip"]) for r in records),
        num_sd_images=sum(int(r["n_sd"]) for r in records),
        num_tokens=sum(int(r["num_tokens"]) for r in records),
        images_dropped=sum(int(r["images_dropped"]) for r in records),
        skipped=dict(Counter(str(r["skip_reason"]) for r in skipped)),
        skipped_positions=[int(r["position"]) for r in skipped],
    )


def iter_train_batches(
    shard: Any,
    spec: CollateSpec,
    micro_batch_size: int,
    num_batches: int | None,
    progress: DataProgress | None,
    prefetch_batches: int = 2,
) -> Iterator[tuple[dict, BatchInfo]]:
    """Micro-batches of a worker's shard, with their accounting.

    Args:
        shard: `ray.train.get_dataset_shard(...)` or one `streaming_split` iterator.
        spec: `make_collate_spec(...)`.
        micro_batch_size: trainable samples per batch.
        num_batches: batches to deliver, then stop (same on every rank: lock step). None:
            until the shard ends, the last batch possibly smaller.
        progress: updated as each batch is handed out (None: no bookkeeping).
        prefetch_batches: Ray Data prefetching.

    Yields:
        (batch contract dict of tensors, BatchInfo); skipped samples consumed while filling a
        batch are counted in its BatchInfo.

    Raises:
        DataExhaustedError: the shard ended before `num_batches` batches.
    """
    delivered, batch, skipped = 0, [], []
    if num_batches == 0:
        return
    for record in _records(shard, micro_batch_size, prefetch_batches):
        (skipped if record["skip_reason"] else batch).append(record)
        if len(batch) == micro_batch_size:
            info = _batch_info(batch, skipped)
            if progress is not None:
                progress.record(info)
            yield collate(batch, spec), info
            delivered, batch, skipped = delivered + 1, [], []
            if delivered == num_batches:
                return
    if num_batches is not None:
        raise DataExhaustedError(
            f"shard ended after {delivered} of {num_batches} micro-batches: too many samples "
            "skipped for the plan's surplus, or more batches asked for than data.num_samples"
        )
    info = _batch_info(batch, skipped)
    if progress is not None:
        progress.record(info)
    if batch:
        yield collate(batch, spec), info
