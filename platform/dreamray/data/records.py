"""Collate-ready records: one built sample as it travels through Ray Data (numpy only).

A *record* holds flat columns of scalars, strings and bytes only (ragged tensors as raw bytes:
no Arrow tensor-extension corner cases, and numpy views on the receiving side). Fields:

    position        int   the sample's position in the stage's stream (resume bookkeeping)
    id, source      str   row id and the data spec's source name
    skip_reason     str   "" for a trainable sample, else a `dreamray.data.sequence` SKIP_* reason
    input_ids       bytes int32 [T]
    labels          bytes int32 [T]
    clip_pixels     bytes uint8 [n_clip, 3, H, W] (CLIP processor resize + crop)
    sd_pixels       bytes uint8 [n_sd, 3, R, R] (SD resize + crop + flip)
    n_clip, n_sd    int   image counts
    images_dropped  int   images that did not fit the length limit
    num_tokens      int   T

Pixels travel as uint8 (4x fewer bytes than float32 through the object store); the collator
(`dreamray.data.collate`) does the transforms' last, purely arithmetic step. This module
imports no torch: Ray Data's split coordinator and Ray Train's dataset manager unpickle the map
function that builds records, and each would otherwise pay seconds of CPU importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RECORD_FIELDS = (
    "position",
    "id",
    "source",
    "skip_reason",
    "input_ids",
    "labels",
    "clip_pixels",
    "n_clip",
    "sd_pixels",
    "n_sd",
    "images_dropped",
    "num_tokens",
)

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
        clip: uint8 [n_clip, 3, H, W].
        sd: uint8 [n_sd, 3, R, R].
        images_dropped: images cut by the length limit.

    Returns:
        The record dict (keys RECORD_FIELDS).
    """
    return {
        "position": int(position),
        "id": sample_id,
        "source": source,
        "skip_reason": "",
        "input_ids": np.asarray(input_ids, dtype=np.int32).tobytes(),
        "labels": np.asarray(labels, dtype=np.int32).tobytes(),
        "clip_pixels": np.ascontiguousarray(clip, dtype=np.uint8).tobytes(),
        "n_clip": int(clip.shape[0]),
        "sd_pixels": np.ascontiguousarray(sd, dtype=np.uint8).tobytes(),
        "n_sd": int(sd.shape[0]),
        "images_dropped": int(images_dropped),
        "num_tokens": len(input_ids),
    }


def skipped_record(position: int, sample_id: str, source: str, reason: str) -> dict[str, Any]:
    """A record that only carries a skip (kept in the stream so it is counted and resumed).

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
    return record
