"""Worker side of the training data: a shard of records -> micro-batches + accounting.

Runs in every train worker, driven by `dreamray.train.feed.DataFeed`::

    spec = make_collate_spec(stage, tokenizer_dir)
    progress = DataProgress(fingerprint, resume=load_data_state(ckpt) or None, rank=rank)
    shard = session.dataset_shard()   # this rank's own dataset `train_<rank>`, from Ray Train
    num_batches = (stage.total_steps - steps_done) * stage.grad_accumulation_steps
    for batch, info in iter_train_batches(shard, spec, micro_batch_size, num_batches, progress):
        ...

Every rank asks for the same number of micro-batches, so the ranks stay in lock step even
when they skipped different numbers of samples; the plan's surplus positions
(`pipeline.plan_length`) feed the difference. This module does not import Ray (the shard is
passed in).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from dreamray.config.specs import TrainStageSpec
from dreamray.data.collate import CollateSpec, collate
from dreamray.data.features import FeatureInfo
from dreamray.data.packing import pack_rows, stage_pack_length
from dreamray.data.progress import BatchInfo, DataProgress
from dreamray.data.sequence import load_stage_tokenizer


class DataExhaustedError(RuntimeError):
    """A worker's shard ended before it delivered the micro-batches it was asked for."""


def make_collate_spec(stage: TrainStageSpec, tokenizer_dir: str) -> CollateSpec:
    """The collator's settings for a stage.

    Args:
        stage: the train stage spec.
        tokenizer_dir: the stage's tokenizer dir (the one its datasets were built with).

    Returns:
        Pad id, image shapes, the CLIP processor's rescale / normalisation, the packing
        row length (`data.packing`) and the precomputed features' layout (`data.features`,
        already resolved to the precompute artifact's dir).

    Raises:
        PackingLayoutError: packing with a `model.max_length` that cannot hold one image.
    """
    from dreamray.data.transforms import ImageTransforms

    tokenizer = load_stage_tokenizer(tokenizer_dir)
    transforms = ImageTransforms(stage.model.vision_path, stage.model.diffusion_path, False, 0)
    rescale, mean, std = transforms.clip_normalization()
    features = None if stage.data.features is None else FeatureInfo.load(stage.data.features)
    return CollateSpec(
        tokenizer.pad_token_id, transforms.clip_shape, transforms.sd_size, rescale, mean, std,
        pack_length=stage_pack_length(stage), features=features,
    )


def _binary_views(column: pa.ChunkedArray) -> list[np.ndarray]:
    views = []
    for chunk in column.chunks:
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[chunk.offset:][: len(chunk) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf else np.zeros(0, np.uint8)
        views += [data[offsets[i] : offsets[i + 1]] for i in range(len(chunk))]
    return views


def table_records(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The records of an Arrow batch, as dicts.

    Payload columns (binary) become numpy uint8 views of the Arrow buffers, which Ray Data
    maps from the object store: no copy of the pixels until the collator concatenates them
    (Ray's numpy batch format copies every value into a `bytes` object first).

    Args:
        table: a batch in `dreamray.data.records.RECORD_SCHEMA` (any chunking).

    Yields:
        One dict per row: Python scalars and strings, uint8 arrays for the binary fields.
    """
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        binary = pa.types.is_binary(column.type)
        columns[name] = _binary_views(column) if binary else column.to_pylist()
    for i in range(table.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def _records(shard: Any, prefetch_blocks: int) -> Iterator[dict[str, Any]]:
    # whole blocks (one map chunk each), cut into micro-batches here: Ray Data's per-batch
    # slicing and formatting at batch_size=micro cost the consumer several times the CPU per
    # sample (benchmarks/data_throughput.py's consumer)
    for table in shard.iter_batches(
        batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_blocks
    ):
        yield from table_records(table)


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
        skipped_examples=[(str(r["skip_reason"]), f"{r['origin']} (id {r['id']})")
                          for r in skipped],
    )


def _filled(records: Iterator[dict], size: int) -> Iterator[tuple[list[dict], list[dict]]]:
    """(trainable, skipped) groups of `size` trainable records in stream order; when the
    stream ends, one last group with fewer (possibly none)."""
    group: list[dict] = []
    skipped: list[dict] = []
    for record in records:
        (skipped if record["skip_reason"] else group).append(record)
        if len(group) == size:
            yield group, skipped
            group, skipped = [], []
    yield group, skipped


def _deal(group: list[dict], micro: int, spec: CollateSpec) -> list[tuple[list, list | None]]:
    """A group's micro-batches as (records, rows): packed, the group's rows dealt round-robin
    to ceil(len / micro) micro-batches (rows index each micro-batch's records); unpacked, or
    when the group packs into fewer rows than micro-batches, consecutive slices of `micro`."""
    count = -(-len(group) // micro)
    slices = [(group[k * micro : (k + 1) * micro], None) for k in range(count)]
    if spec.pack_length is None or count <= 1:
        return slices
    rows = pack_rows([int(r["num_tokens"]) for r in group], spec.pack_length)
    if len(rows) < count:
        return slices
    out = []
    for k in range(count):
        dealt = rows[k::count]
        starts = np.cumsum([0] + [len(row) for row in dealt]).tolist()
        local = [list(range(a, b)) for a, b in zip(starts, starts[1:], strict=False)]
        out.append(([group[i] for row in dealt for i in row], local))
    return out


def iter_train_batches(
    shard: Any,
    spec: CollateSpec,
    micro_batch_size: int,
    num_batches: int | None,
    progress: DataProgress | None,
    prefetch_blocks: int = 2,
    pack_pool: int = 1,
) -> Iterator[tuple[dict, BatchInfo]]:
    """Micro-batches of a worker's shard, with their accounting.

    Args:
        shard: `ray.train.get_dataset_shard(...)` or one `streaming_split` iterator.
        spec: `make_collate_spec(...)`.
        micro_batch_size: trainable samples per batch (packed with a pool: on average).
        num_batches: batches to deliver, then stop (same on every rank: lock step). None:
            until the shard ends, the last batch possibly smaller.
        progress: updated as each batch is handed out (None: no bookkeeping).
        prefetch_blocks: blocks (map chunks) Ray Data fetches ahead of the one being cut.
        pack_pool: when packing, how many consecutive micro-batches' samples are packed
            together and their rows dealt back to that many micro-batches
            (`dreamray.data.packing.stage_pack_pool`); ignored without packing.

    Yields:
        (batch contract dict of tensors, BatchInfo); skipped samples consumed while filling a
        batch (or a pool) are counted in its (its first batch's) BatchInfo.

    Raises:
        DataExhaustedError: the shard ended before `num_batches` batches.
        ValueError: `num_batches` is not a whole number of pools.
    """
    pool = pack_pool if spec.pack_length is not None else 1
    if num_batches is not None and num_batches % pool:
        raise ValueError(f"num_batches={num_batches} is not a multiple of pack_pool={pool}")
    delivered = 0
    if num_batches == 0:
        return
    for group, skipped in _filled(_records(shard, prefetch_blocks), micro_batch_size * pool):
        if num_batches is not None and len(group) < micro_batch_size * pool:
            raise DataExhaustedError(
                f"shard ended after {delivered} of {num_batches} micro-batches: too many "
                "samples skipped for the plan's surplus, or more batches asked for than "
                "data.num_samples"
            )
        parts = _deal(group, micro_batch_size, spec) or [([], None)]
        for k, (records, rows) in enumerate(parts):
            info = _batch_info(records, skipped if k == 0 else [])
            if progress is not None:
                progress.record(info)
            if records:
                yield collate(records, spec, rows), info
            delivered += 1
            if delivered == num_batches:
                return
