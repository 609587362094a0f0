"""The small training loop every pretrained-world-zoo tower uses (CPU, fp32, AdamW)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class LossCurve:
    """What a training run did: its loss at the start and at the end.

    Attributes:
        steps: optimizer steps taken.
        first: mean loss over the first 10% of the steps.
        last: mean loss over the last 10% of the steps.
    """

    steps: int
    first: float
    last: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return {"steps": self.steps, "loss_first": self.first, "loss_last": self.last}


def train_steps(
    params: Iterable[torch.nn.Parameter],
    loss_of_step: Callable[[int, torch.Generator], torch.Tensor],
    steps: int,
    lr: float,
    seed: int,
    desc: str,
    progress: bool = True,
) -> LossCurve:
    """Run `steps` AdamW steps of `loss_of_step(step, generator)` (linear warmup, then constant).

    Args:
        params: the trained parameters.
        loss_of_step: builds the step's loss from the step index and the run's generator.
        steps: optimizer steps (>= 1).
        lr: the peak learning rate.
        seed: seeds the generator the loss draws batches and noise from.
        desc: the progress bar's label.
        progress: show a tqdm bar.

    Returns:
        The loss curve.

    Raises:
        FloatingPointError: a non-finite loss (named by step).
    """
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        loss = loss_of_step(step, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    tenth = max(1, steps // 10)
    return LossCurve(steps, sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth)


def batch_indices(generator: torch.Generator, n: int, batch_size: int) -> torch.Tensor:
    """A random batch of `batch_size` indices into `n` items (with replacement across steps)."""
    return torch.randint(0, n, (batch_size,), generator=generator)
