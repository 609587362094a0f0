"""The language-modelling loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamray.model.tokens import IGNORE_INDEX


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy averaged over the supervised tokens.

    Safe when every label is ignored: the result is then a zero that is still connected to
    `logits`, so every parameter upstream gets a (zero) gradient and collectives stay in step.

    Args:
        logits: ``[B, L, V]``.
        labels: ``[B, L]``, ``IGNORE_INDEX`` (-100) where unsupervised.

    Returns:
        ``(loss, num_tokens)``: the mean loss (fp32 scalar) and how many tokens it averages.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    per_token = F.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    num_tokens = (shift_labels != IGNORE_INDEX).sum()
    return per_token.sum() / num_tokens.clamp(min=1), num_tokens
