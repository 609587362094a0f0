"""The language-modelling loss, as a sum over supervised tokens and their count.

The loop divides the sums of an optimizer step by the step's gang-wide count (see
`dreamray.train.loop`); `lm_loss` is the per-batch mean for callers that want one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamray.model.tokens import IGNORE_INDEX


def supervised_token_count(labels: torch.Tensor) -> torch.Tensor:
    """How many next-token targets a batch supervises (what `lm_loss_sum` sums over).

    Args:
        labels: ``[B, L]``, ``IGNORE_INDEX`` (-100) where unsupervised.

    Returns:
        An integer scalar tensor: the labels after the shift that are not ignored.
    """
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over the supervised tokens.

    Safe when every label is ignored: the sum is then a zero that is still connected to
    `logits`, so every parameter upstream gets a (zero) gradient and collectives stay in step.

    Args:
        logits: ``[B, L, V]``.
        labels: ``[B, L]``, ``IGNORE_INDEX`` (-100) where unsupervised.

    Returns:
        ``(loss_sum, num_tokens)``: the summed loss (fp32 scalar) and how many tokens it sums.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    per_token = F.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return per_token.sum(), supervised_token_count(labels)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy averaged over the batch's supervised tokens.

    Args:
        logits: ``[B, L, V]``.
        labels: ``[B, L]``, ``IGNORE_INDEX`` (-100) where unsupervised.

    Returns:
        ``(loss, num_tokens)``: the mean loss (fp32 scalar; a connected zero when nothing is
        supervised) and how many tokens it averages.
    """
    total, num_tokens = lm_loss_sum(logits, labels)
    return total / num_tokens.clamp(min=1), num_tokens
