"""Collate-ready records: one built sample as it travels through Ray Data (numpy only).

A *record* holds flat columns of scalars, strings and raw payloads only (ragged tensors as
Arrow binary values: no Arrow tensor-extension corner cases, and numpy views on the receiving
side). Fields (RECORD_SCHEMA):

    position        int   the sample's position in the stage's stream (resume bookkeeping)
    id, source      str   row id and the data spec's source name
    skip_reason     str   "" for a trainable sample, else a `dreamray.data.sequence` SKIP_* reason
    origin          str   where a skipped sample's row is (`<shard file> row <n>`); "" otherwise
    input_ids       bytes int32 [T]
    labels          bytes int32 [T]
    clip_pixels     bytes uint8 [n_clip, 3, H, W] (CLIP processor resize + crop); on
                          precomputed features (`data.features`): the CLIP tower's
                          [n_clip, P, C] in the features' dtype
    sd_pixels       bytes uint8 [n_sd, 3, R, R] (SD resize + crop + flip); on features: the
                          VAE posterior's [n_sd, 2c, h, w]
    n_clip, n_sd    int   image counts
    images_dropped  int   images that did not fit the length limit
    num_tokens      int   T

Pixels travel as uint8 (4x fewer bytes than float32 through the object store); the collator
(`dreamray.data.collate`) does the transforms' last, purely arithmetic step. A record dict
holds its payloads as contiguous numpy arrays, and `records_table` wraps their memory in the
Arrow block without copying it: the only copy on the map side is Ray's into the object store.
This module imports no torch: Ray Data's split coordinator and Ray Train's dataset manager
unpickle the map function that builds records, and each would otherwise pay seconds of CPU
importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

RECORD_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("skip_reason", pa.string()),
        ("origin", pa.string()),
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
RECORD_FIELDS = tuple(RECORD_SCHEMA.names)
PAYLOAD_FIELDS = tuple(f.name for f in RECORD_SCHEMA if pa.types.is_binary(f.type))

def make_record(
    position: int,
    sample_id: str,
    source: str,
    input_ids: Sequence[int],
    labels: Sequence[int],
    clip: np.ndarray,
    sd: np.ndarray,
    images_dropped: int,
) -> dict[str, Any]:
    """Pack a trainable sample into a record.

    Args:
        position: stream position.
        sample_id: row id.
        source: source name.
        input_ids, labels: the built sequence.
        clip: uint8 [n_clip, 3, H, W] (or its precomputed features).
        sd: uint8 [n_sd, 3, R, R] (or its precomputed VAE moments).
        images_dropped: images cut by the length limit.

    Returns:
        The record dict (keys RECORD_FIELDS; payloads as contiguous numpy arrays).
    """
    return {
        "position": int(position),
        "id": sample_id,
        "source": source,
        "skip_reason": "",
        "origin": "",
        "input_ids": np.ascontiguousarray(input_ids, dtype=np.int32),
        "labels": np.ascontiguousarray(labels, dtype=np.int32),
        "clip_pixels": np.ascontiguousarray(clip),
        "n_clip": int(clip.shape[0]),
        "sd_pixels": np.ascontiguousarray(sd),
        "n_sd": int(sd.shape[0]),
        "images_dropped": int(images_dropped),
        "num_tokens": len(input_ids),
    }


def skipped_record(
    position: int, sample_id: str, source: str, reason: str, origin: str = ""
) -> dict[str, Any]:
    """A record that only carries a skip (kept in the stream so it is counted and resumed).

    Args:
        position: stream position.
        sample_id: row id.
        source: source name.
        reason: a `dreamray.data.sequence` SKIP_* reason.
        origin: the row's shard file and row number, for error messages.

    Returns:
        The record dict with empty payload.
    """
    record = make_record(
        position,
        sample_id,
        source,
        [],
        [],
        np.zeros((0, 3, 1, 1), np.float32),
        np.zeros((0, 3, 1, 1), np.uint8),
        0,
    )
    record["skip_reason"] = reason
    record["origin"] = origin
    return record


def _payload_column(payloads: Sequence[np.ndarray]) -> pa.ChunkedArray:
    # One chunk per record, each a view of the record's array: concatenating a chunk's pixels
    # into one fresh buffer would copy them (mostly page faults on the new buffer) for nothing,
    # since Ray copies the block into the object store right after anyway.
    chunks = []
    for payload in payloads:
        offsets = np.array([0, payload.nbytes], dtype=np.int32)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(payload)]
        chunks.append(pa.Array.from_buffers(pa.binary(), 1, buffers))
    return pa.chunked_array(chunks, pa.binary())


def records_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Records -> an Arrow block in RECORD_SCHEMA, payload memory shared, not copied.

    Args:
        records: record dicts from `make_record` / `skipped_record`.

    Returns:
        The table, one row per record in order; each payload column has one chunk per record
        (readers must not assume a single chunk).
    """
    columns = []
    for field in RECORD_SCHEMA:
        values = [r[field.name] for r in records]
        if field.name in PAYLOAD_FIELDS:
            columns.append(_payload_column(values))
        else:
            columns.append(pa.chunked_array([pa.array(values, field.type)]))
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)
