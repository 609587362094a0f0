"""Sequence packing (`data.packing`): which samples share a row (pure).

The samples packed together are those the unpacked run trains in one optimizer step on one
rank (`stage_pack_pool`; one micro-batch under `loss.normalization: micro_batch`), in stream
order: first-fit decreasing into rows of at most `max_length` tokens, then the narrowest row
width that still needs no more rows (`pack_rows`); `dreamray.data.batches` deals the rows to
the step's micro-batches. Keeping each step's samples unchanged keeps everything that counts
samples (epoch size, steps, the resume positions, the loss normalisation's per-step sums)
exactly as it is without packing: a checkpoint falls on a step, hence a sample, boundary and
"consumed = trained + skipped" holds as before.

The layout depends only on the samples' lengths and order, so it is deterministic given the
sample stream. Attention never crosses a sample: each sample's position ids restart at 0 (the
collator writes them) and the model lets the LLM build a block-diagonal causal mask from them
(`dreamray.model.packed_attention.run_packed_llm`). A sample's IMG and DRM blocks lie inside
its own tokens, so its images stay with it; the collator concatenates the images in packed
row-major order, the order in which the model finds the blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

# Tokens besides a sample's image blocks that every trainable sample holds: <s> and </s>.
_FRAME_TOKENS = 2


class PackingLayoutError(ValueError):
    """`data.packing` with a `max_length` that cannot hold one sample's image blocks."""


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sample indices per row: longest first, each into the first row with room (ties keep
    stream order, so the result is a pure function of the lengths)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Lay out samples in as few rows as first-fit decreasing finds, as narrow as possible.

    Args:
        lengths: token count of each sample, in stream order.
        max_length: the longest row allowed (`model.max_length`).

    Returns:
        Sample indices per row; within a row, in the order they are laid out. Every index
        appears exactly once; no row sums to more than `max_length`.

    Raises:
        ValueError: no samples, or a sample that is empty or longer than `max_length` (the
            sequence builder never makes one).
    """
    if not lengths:
        raise ValueError("cannot pack an empty micro-batch")
    bad = [(i, n) for i, n in enumerate(lengths) if not 0 < n <= max_length]
    if bad:
        raise ValueError(f"samples (index, tokens) {bad} do not fit max_length {max_length}")
    rows = _first_fit_decreasing(lengths, max_length)
    # the narrowest width that still needs no more rows: rows come out balanced, so the
    # padding is only what the last row leaves
    lo = max(max(lengths), -(-sum(lengths) // len(rows)))
    hi = max_length
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_first_fit_decreasing(lengths, mid)) <= len(rows):
            hi = mid
        else:
            lo = mid + 1
    return _first_fit_decreasing(lengths, hi) if hi < max_length else rows


def packed_positions(lengths: Sequence[int], width: int) -> list[int]:
    """Position ids of one packed row: 0.. per sample, then 0.. over the padding.

    Args:
        lengths: token counts of the row's samples, in layout order.
        width: the row's padded length.

    Returns:
        `width` position ids (the padding counts as one more sequence, which nothing reads).
    """
    positions = [p for n in lengths for p in range(n)]
    return positions + list(range(width - len(positions)))


def single_image_tokens(mode: str, num_patches: int, num_queries: int) -> int:
    """Tokens of the largest single-image block a mode builds, with <s> and </s>.

    Args:
        mode: `DataSpec.mode`.
        num_patches: CLIP patches per image (IMG block = num_patches + 2).
        num_queries: dream queries Q (DRM block = Q + 2).

    Returns:
        comprehension: IMG; creation: DRM; joint: DRM + IMG (a document's block), each + 2.
    """
    image, dream = num_patches + 2, num_queries + 2
    if mode == "comprehension":
        return image + _FRAME_TOKENS
    if mode == "creation":
        return dream + _FRAME_TOKENS
    return image + dream + _FRAME_TOKENS


def check_packing_layout(
    mode: str, num_patches: int, num_queries: int, max_length: int, key: str
) -> None:
    """Refuse a packing `max_length` that cannot hold one sample with one image.

    Args:
        mode: `DataSpec.mode`.
        num_patches: CLIP patches per image.
        num_queries: dream queries Q.
        max_length: the row length packing fills.
        key: the config key that sets `max_length`, named in the error (e.g.
            ``stages.stage2.model.max_length``).

    Raises:
        PackingLayoutError: `max_length` below `single_image_tokens(...)`.
    """
    need = single_image_tokens(mode, num_patches, num_queries)
    if max_length < need:
        raise PackingLayoutError(
            f"{key}={max_length} is shorter than one {mode}-mode sample with a single image "
            f"({need} tokens: <s>, {num_queries} + 2 dream and/or {num_patches} + 2 image block "
            f"tokens, </s>); data.packing needs max_length >= {need}"
        )


def stage_pack_length(stage) -> int | None:
    """The row length a train stage packs to, after checking that it can hold one image.

    Args:
        stage: a `TrainStageSpec`.

    Returns:
        `model.max_length` when `data.packing` is on, else None (one sample per row).

    Raises:
        PackingLayoutError: `model.max_length` shorter than one sample's image blocks (the
            CLIP patch count is read from `model.vision_path`).
    """
    if not stage.data.packing:
        return None
    from dreamray.data.sequence import SequenceLayout

    model = stage.model
    layout = SequenceLayout.from_model(model.vision_path, model.num_dream_queries, model.max_length)
    check_packing_layout(
        stage.data.mode, layout.num_patches, layout.num_queries, layout.max_length,
        "model.max_length",
    )
    return layout.max_length


def stage_pack_pool(stage) -> int:
    """How many micro-batches a train stage packs together: its optimizer step's.

    Under `loss.normalization: step` an optimizer step's gradient is the per-token (per-image)
    mean over all its micro-batches, so which of them a sample travels in does not change it:
    the step's samples (micro x accumulation, on each rank) can share rows, which leaves far
    less padding than packing each micro-batch alone. Checkpoints fall on step boundaries, so
    resume is unaffected. Under `micro_batch` each micro-batch's mean is its own, and a
    micro-batch keeps its samples.

    Args:
        stage: a `TrainStageSpec`.

    Returns:
        `grad_accumulation_steps` under step normalisation with packing, else 1.
    """
    if not stage.data.packing or stage.loss.normalization != "step":
        return 1
    return stage.grad_accumulation_steps
