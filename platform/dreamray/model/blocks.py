"""Finding IMG and DRM blocks in ``input_ids``, checking them, and splicing embeddings into them.

A block is ``start + length x <im_patch> + end``; its slots are the `length` positions after the
start token. Blocks are numbered in row-major order (sample 0 first, left to right), which is the
order of the images in the batch contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class BlockError(ValueError):
    """Malformed blocks, or blocks that do not match the images supplied."""


@dataclass(frozen=True)
class Blocks:
    """The blocks of one kind in a batch: sample index and start position of each."""

    kind: str
    rows: torch.Tensor
    starts: torch.Tensor
    length: int

    def __len__(self) -> int:
        return int(self.rows.numel())

    def slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Index tensors ``(rows, cols)``, each ``[N, length]``, of every block's slots."""
        offsets = torch.arange(1, self.length + 1, device=self.starts.device)
        cols = self.starts[:, None] + offsets
        return self.rows[:, None].expand_as(cols), cols

    def per_sample(self, batch_size: int) -> list[int]:
        """How many blocks each sample holds."""
        return torch.bincount(self.rows, minlength=batch_size).tolist()


def find_blocks(
    input_ids: torch.Tensor,
    kind: str,
    start_id: int,
    fill_id: int,
    end_id: int,
    length: int,
    allow_open_tail: bool = False,
) -> Blocks:
    """Locate and check every block that opens with `start_id`.

    Args:
        input_ids: ``[B, L]`` token ids.
        kind: ``"IMG"`` or ``"DRM"``, for messages.
        start_id, fill_id, end_id: the block's start, slot and end token ids.
        length: slots per block.
        allow_open_tail: skip a block that the end of the sequence cuts off (in generation the
            last token may be a freshly sampled start token); otherwise such a block is an error.

    Returns:
        The complete blocks.

    Raises:
        BlockError: naming the sample and position of a block whose slots or end token are wrong.
    """
    rows, starts = (input_ids == start_id).nonzero(as_tuple=True)
    seq_len = input_ids.shape[1]
    fits = starts + length + 1 < seq_len
    if allow_open_tail:
        rows, starts = rows[fits], starts[fits]
    elif not bool(fits.all()):
        i = int((~fits).nonzero()[0])
        raise BlockError(
            f"sample {int(rows[i])}: {kind} block at position {int(starts[i])} is cut off by the "
            f"sequence end (needs {length} slots and an end token, length is {seq_len})"
        )
    blocks = Blocks(kind=kind, rows=rows, starts=starts, length=length)
    _check_contents(input_ids, blocks, fill_id, end_id)
    return blocks


def _check_contents(input_ids: torch.Tensor, blocks: Blocks, fill_id: int, end_id: int) -> None:
    if not len(blocks):
        return
    rows, cols = blocks.slots()
    slots_ok = (input_ids[rows, cols] == fill_id).all(dim=1)
    end_ok = input_ids[blocks.rows, blocks.starts + blocks.length + 1] == end_id
    bad = ~(slots_ok & end_ok)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise BlockError(
            f"sample {int(blocks.rows[i])}: {blocks.kind} block at position "
            f"{int(blocks.starts[i])} is malformed: expected {blocks.length} x <im_patch> "
            "then its end token"
        )


def check_patch_count(input_ids: torch.Tensor, fill_id: int, blocks: list[Blocks]) -> None:
    """Every `<im_patch>` must lie inside a block (a stray one means a block was cut in half).

    Raises:
        BlockError: naming the first sample whose `<im_patch>` count differs from its blocks'.
    """
    batch = input_ids.shape[0]
    have = (input_ids == fill_id).sum(dim=1).tolist()
    want = [0] * batch
    for b in blocks:
        for row, n in enumerate(b.per_sample(batch)):
            want[row] += n * b.length
    for row, (h, w) in enumerate(zip(have, want, strict=True)):
        if h != w:
            raise BlockError(
                f"sample {row}: {h} <im_patch> tokens but its IMG/DRM blocks account for {w}; "
                "a block was truncated or a stray <im_patch> was inserted"
            )


def check_image_count(blocks: Blocks, num_images: int, batch_size: int, what: str) -> None:
    """The number of blocks must equal the number of images supplied for them.

    Raises:
        BlockError: with the per-sample block counts, so the offending sample can be found.
    """
    if len(blocks) != num_images:
        raise BlockError(
            f"input_ids hold {len(blocks)} {blocks.kind} blocks (per sample: "
            f"{blocks.per_sample(batch_size)}) but {what} has {num_images} images"
        )


def splice(embeds: torch.Tensor, blocks: Blocks, values: torch.Tensor) -> torch.Tensor:
    """Write ``values [N, length, D]`` into the slots of the blocks, out of place (keeps autograd).

    Args:
        embeds: ``[B, L, D]`` token embeddings.
        blocks: where to write.
        values: one row of `length` vectors per block.

    Returns:
        A new ``[B, L, D]`` tensor.
    """
    if not len(blocks):
        return embeds
    rows, cols = blocks.slots()
    return embeds.index_put((rows, cols), values.to(embeds.dtype))


def gather(hidden: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Read ``hidden [B, L, D]`` at the slots of the blocks: ``[N, length, D]``."""
    rows, cols = blocks.slots()
    return hidden[rows, cols]


def images_given(
    pixels: torch.Tensor | None, precomputed: torch.Tensor | None, tower: str
) -> tuple[torch.Tensor | None, str]:
    """The images of one tower as given to the forward: pixels, or precomputed features
    (never both).

    Args:
        pixels: the tower's pixel values, or None.
        precomputed: its precomputed features / moments, or None.
        tower: ``clip`` or ``sd``.

    Returns:
        (the tensor given or None, the batch key it came under: for count errors).

    Raises:
        ValueError: both were given.
    """
    if pixels is not None and precomputed is not None:
        raise ValueError(f"{tower}: both pixel values and precomputed features were given")
    if precomputed is not None:
        return precomputed, "clip_features" if tower == "clip" else "sd_latent_moments"
    return pixels, f"{tower}_pixel_values"
