"""Packed rows through the LLM (`data.packing`): no token attends across a sample.

Pure torch + transformers; used by `DreamLLM.forward` on a packed batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dreamray.model.dreamllm import DreamLLM

# Transformers attentions that derive a per-sample mask (or varlen lengths) from packed position
# ids when the 2D attention mask is None (`transformers.masking_utils`, flash-attention utils).
PACKED_ATTENTION = (
    "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
)


def run_packed_llm(
    model: DreamLLM, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
    flatten: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal LM on packed rows, no token attending across a sample.

    Transformers reads packed rows from ``position_ids`` when no 2D attention mask is
    given: a position that does not follow its predecessor by 1 opens a new sequence. SDPA
    and eager attention then get a block-diagonal causal mask; flash-attention runs its
    varlen kernel, but only on a batch of one row, so for it the rows are laid end to end
    first (every row's first token is at position 0, so no sequence spans two rows). The
    padding after a row's last sample is one more sequence of its own, read by nothing.

    Args:
        model: the DreamLLM whose LLM runs.
        inputs_embeds: ``[B, L, D]``.
        position_ids: ``[B, L]``, restarting at 0 for every sample and for the padding.
        flatten: lay the rows end to end (None: when the attention is flash-attention).

    Returns:
        ``(logits [B, L, V], last_hidden [B, L, D])``.

    Raises:
        ValueError: the LLM's attention implementation builds no per-sample mask.
    """
    implementation = model.llm.config._attn_implementation
    if implementation not in PACKED_ATTENTION:
        raise ValueError(
            f"data.packing needs one of the LLM attentions {PACKED_ATTENTION} (they keep "
            f"packed samples apart); this LLM uses {implementation!r}"
        )
    if flatten is None:
        flatten = implementation.startswith("flash_attention")
    if not flatten:
        out, hidden = model.run_llm(inputs_embeds, None, position_ids=position_ids)
        return out.logits, hidden
    rows, width = position_ids.shape
    out, hidden = model.run_llm(
        inputs_embeds.reshape(1, rows * width, -1), None,
        position_ids=position_ids.reshape(1, rows * width),
    )
    return out.logits.view(rows, width, -1), hidden.view(rows, width, -1)

