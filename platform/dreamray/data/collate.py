"""The collator: collate-ready records (`dreamray.data.records`) -> the batch contract (pure).

The collator does the transforms' last, purely arithmetic step on the uint8 pixels: CLIP
rescale + mean/std, SD to [-1, 1]. It pads on the right to the longest sample: `input_ids` with
the pad id, `attention_mask` 0, `labels` -100, and concatenates images in sample order, so the
i-th IMG (DRM) block of the flattened batch owns the i-th CLIP (SD) image. No image: shape
[0, 3, H, W]. This module imports neither Ray nor DeepSpeed (checked by
tests/unit/test_boundaries.py).

Precomputed features (`CollateSpec.features` set, a stage with `data.features`): the records'
payloads are the towers' outputs (`dreamray.data.features`), and the batch holds
``clip_features [N_img, P, C]`` and ``sd_latent_moments [N_dm, 2c, h, w]`` in their stored
dtype instead of the two pixel tensors.

Packing (`CollateSpec.pack_length` set, from `data.packing`): the same samples share rows of at
most that many tokens (`dreamray.data.packing`), and the batch gains ``position_ids [R, W]``,
restarting at 0 for every sample, which is how the model tells the samples of a row apart.
Each sample's first label becomes -100 (it is never a target unpacked either, and the row's
previous sample must not learn to predict it); images follow the packed row-major order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dreamray.data.features import FeatureInfo
from dreamray.data.packing import pack_rows, packed_positions
from dreamray.model.tokens import IGNORE_INDEX

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "clip_pixel_values", "sd_pixel_values")
POSITION_IDS = "position_ids"  # only in a packed batch
# only in a batch of precomputed features (`data.features`), in place of the pixel values
CLIP_FEATURES = "clip_features"
SD_MOMENTS = "sd_latent_moments"
FEATURE_KEYS = (CLIP_FEATURES, SD_MOMENTS)


@dataclass(frozen=True)
class CollateSpec:
    """What the collator needs to know besides the records."""

    pad_id: int
    clip_shape: tuple[int, int, int]  # (3, H, W) of one CLIP input
    sd_size: int  # R
    clip_rescale: float  # the CLIP processor's rescale factor
    clip_mean: tuple[float, ...]  # its image_mean
    clip_std: tuple[float, ...]  # its image_std
    pack_length: int | None = None  # rows of at most this many tokens; None: one sample a row
    # a stage on precomputed features: the records' payloads are its features, not pixels
    features: FeatureInfo | None = None


def _images(records: Sequence[Mapping[str, Any]], key: str, count: str, shape, dtype):
    arrays = []
    for r in records:
        arr = np.frombuffer(r[key], dtype=dtype)
        if arr.size != int(r[count]) * int(np.prod(shape)):
            raise ValueError(
                f"record {r['id']}: {key} holds {arr.size} values, expected "
                f"{int(r[count])} x {tuple(shape)}"
            )
        arrays.append(arr.reshape(int(r[count]), *shape))
    return torch.from_numpy(np.concatenate(arrays) if arrays else np.zeros((0, *shape), dtype))


def collate(
    records: Sequence[Mapping[str, Any]],
    spec: CollateSpec,
    rows: list[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Build the batch contract from trainable records.

    Args:
        records: one or more records with an empty `skip_reason`.
        spec: pad id, image shapes and whether to pack.
        rows: packing only: the layout, indices into `records` per row, when the caller
            decided it (`dreamray.data.batches` packs a pool of micro-batches at once); None:
            `pack_rows` decides.

    Returns:
        ``input_ids`` long [B, L], ``attention_mask`` long [B, L], ``labels`` long [B, L],
        ``clip_pixel_values`` float32 [N_img, 3, H, W] (normalised), ``sd_pixel_values`` float32
        [N_dm, 3, R, R] in [-1, 1]; packed, B counts rows and ``position_ids`` long [B, L] is
        added.

    Raises:
        ValueError: no records, a skipped record, a payload of the wrong size, or (packing) a
            record longer than `spec.pack_length`.
    """
    if not records:
        raise ValueError("cannot collate an empty batch")
    skipped = [r["id"] for r in records if r["skip_reason"]]
    if skipped:
        raise ValueError(f"skipped records cannot be collated: {skipped}")
    ids = [np.frombuffer(r["input_ids"], dtype=np.int32) for r in records]
    labels = [np.frombuffer(r["labels"], dtype=np.int32) for r in records]
    if spec.pack_length is None:
        rows = [[i] for i in range(len(records))]
    elif rows is None:
        rows = pack_rows([len(x) for x in ids], spec.pack_length)
    tokens = _token_tensors(ids, labels, rows, spec)
    ordered = [records[i] for row in rows for i in row]  # the blocks' row-major order
    position_ids = tokens.pop(POSITION_IDS, None)
    batch = {**tokens, **(_pixels(ordered, spec) if spec.features is None
                          else _features(ordered, spec.features))}
    if position_ids is not None:
        batch[POSITION_IDS] = position_ids
    return batch


def normalize_clip(pixels: torch.Tensor, rescale: float, mean, std) -> torch.Tensor:
    """The CLIP processor's rescale + normalise, on the uint8 it resized and cropped (in place
    on a float32 copy: the same float32 operations in the same order, without three
    temporaries).

    Args:
        pixels: uint8 ``[N, 3, H, W]``.
        rescale, mean, std: `ImageTransforms.clip_normalization`.

    Returns:
        float32 ``[N, 3, H, W]``.
    """
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return pixels.to(torch.float32).mul_(rescale).sub_(mean).div_(std)


def normalize_sd(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1]: the last step of the SD transform (ToTensor + Normalize(0.5, 0.5))."""
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


def _pixels(ordered, spec: CollateSpec) -> dict[str, torch.Tensor]:
    sd_shape = (3, spec.sd_size, spec.sd_size)
    sd = _images(ordered, "sd_pixels", "n_sd", sd_shape, np.uint8)
    clip = _images(ordered, "clip_pixels", "n_clip", spec.clip_shape, np.uint8)
    return {
        "clip_pixel_values": normalize_clip(clip, spec.clip_rescale, spec.clip_mean,
                                            spec.clip_std),
        "sd_pixel_values": normalize_sd(sd),
    }


def _features(ordered, info: FeatureInfo) -> dict[str, torch.Tensor]:
    dtype = np.dtype(info.dtype)
    return {
        CLIP_FEATURES: _images(ordered, "clip_pixels", "n_clip", info.clip_shape, dtype),
        SD_MOMENTS: _images(ordered, "sd_pixels", "n_sd", info.moments_shape, dtype),
    }


def _token_tensors(ids, labels, rows: list[list[int]], spec: CollateSpec) -> dict:
    """input_ids, attention_mask, labels (and position_ids when packing) of the rows, padded
    on the right to the longest row."""
    lengths = [[len(ids[i]) for i in row] for row in rows]
    width = max(sum(row) for row in lengths)
    batch_ids = np.full((len(rows), width), spec.pad_id, dtype=np.int64)
    batch_labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            end = at + len(ids[i])
            batch_ids[r, at:end] = ids[i]
            batch_labels[r, at:end] = labels[i]
            mask[r, at:end] = 1
            if spec.pack_length is not None:
                batch_labels[r, at] = IGNORE_INDEX  # never a target: see the module docstring
            at = end
    out = {
        "input_ids": torch.from_numpy(batch_ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(batch_labels),
    }
    if spec.pack_length is not None:
        positions = [packed_positions(row, width) for row in lengths]
        out[POSITION_IDS] = torch.tensor(positions, dtype=torch.long)
    return out


def count_samples(batch: Mapping[str, torch.Tensor]) -> int:
    """How many samples a collated batch holds (packed: several per row).

    Args:
        batch: a batch from `collate` (``position_ids`` present when packed).

    Returns:
        Rows when unpacked; otherwise the real tokens at position 0 (every sample starts at 0,
        padding is not real).
    """
    positions = batch.get(POSITION_IDS)
    if positions is None:
        return int(batch["input_ids"].shape[0])
    starts = (positions == 0) & (batch["attention_mask"] != 0)
    return int(starts.sum())
