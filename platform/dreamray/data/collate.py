"""The collator: collate-ready records (`dreamray.data.records`) -> the batch contract (pure).

The collator does the transforms' last, purely arithmetic step on the uint8 pixels: CLIP
rescale + mean/std, SD to [-1, 1]. It pads on the right to the longest sample: `input_ids` with
the pad id, `attention_mask` 0, `labels` -100, and concatenates images in sample order, so the
i-th IMG (DRM) block of the flattened batch owns the i-th CLIP (SD) image. No image: shape
[0, 3, H, W]. This module imports neither Ray nor DeepSpeed (checked by
tests/unit/test_boundaries.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dreamray.model.tokens import IGNORE_INDEX

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "clip_pixel_values", "sd_pixel_values")


@dataclass(frozen=True)
class CollateSpec:
    """What the collator needs to know besides the records."""

    pad_id: int
    clip_shape: tuple[int, int, int]  # (3, H, W) of one CLIP input
    sd_size: int  # R
    clip_rescale: float  # the CLIP processor's rescale factor
    clip_mean: tuple[float, ...]  # its image_mean
    clip_std: tuple[float, ...]  # its image_std


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


def collate(records: Sequence[Mapping[str, Any]], spec: CollateSpec) -> dict[str, torch.Tensor]:
    """Build the batch contract from trainable records.

    Args:
        records: one or more records with an empty `skip_reason`.
        spec: pad id and image shapes.

    Returns:
        ``input_ids`` long [B, L], ``attention_mask`` long [B, L], ``labels`` long [B, L],
        ``clip_pixel_values`` float32 [N_img, 3, H, W] (normalised), ``sd_pixel_values`` float32
        [N_dm, 3, R, R] in [-1, 1].

    Raises:
        ValueError: no records, a skipped record, or a payload of the wrong size.
    """
    if not records:
        raise ValueError("cannot collate an empty batch")
    skipped = [r["id"] for r in records if r["skip_reason"]]
    if skipped:
        raise ValueError(f"skipped records cannot be collated: {skipped}")
    ids = [np.frombuffer(r["input_ids"], dtype=np.int32) for r in records]
    labels = [np.frombuffer(r["labels"], dtype=np.int32) for r in records]
    length = max(len(x) for x in ids)
    batch_ids = np.full((len(ids), length), spec.pad_id, dtype=np.int64)
    batch_labels = np.full((len(ids), length), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(ids), length), dtype=np.int64)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        batch_ids[i, : len(x)] = x
        batch_labels[i, : len(y)] = y
        mask[i, : len(x)] = 1
    sd_shape = (3, spec.sd_size, spec.sd_size)
    sd = _images(records, "sd_pixels", "n_sd", sd_shape, np.uint8)
    clip = _images(records, "clip_pixels", "n_clip", spec.clip_shape, np.uint8)
    mean = torch.tensor(spec.clip_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.clip_std, dtype=torch.float32).view(1, 3, 1, 1)
    return {
        "input_ids": torch.from_numpy(batch_ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(batch_labels),
        # the CLIP processor's rescale + normalise, on the uint8 it resized and cropped (in
        # place: the same float32 operations in the same order, without three temporaries)
        "clip_pixel_values": clip.to(torch.float32).mul_(spec.clip_rescale).sub_(mean).div_(std),
        # uint8 -> [-1, 1]: the last step of the SD transform (ToTensor + Normalize(0.5, 0.5))
        "sd_pixel_values": sd.to(torch.float32).div_(127.5).sub_(1.0),
    }
