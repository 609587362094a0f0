"""The loop core: optimizer steps of a DeepSpeed engine over an iterator of batches.

No Ray and no process-group setup here: `run_steps` is what the Ray worker runs and what the
in-process tests run with world size 1. One optimizer step = `accum` micro-batches, each
forward -> `engine.backward` -> `engine.step` (DeepSpeed applies the update on the last one).

Collectives per micro-step (gloo/NCCL, tiny tensors): "does every rank have a batch" before
the forward, so that a rank that ran out of data stops every rank instead of hanging them; and
the sums of losses and counts after it, which give gang-wide metrics and one gang-wide NaN
decision. A step with a non-finite loss on any rank is skipped on every rank (no update; the
schedule still advances, so `step` keeps meaning "optimizer steps of the plan").
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dreamray.train.state import TrainState

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "clip_pixel_values", "sd_pixel_values")
# Order of the per-micro-step sums that are all-reduced.
_STATS = (
    "loss", "lm_loss", "vm_loss", "nonfinite", "tokens", "samples", "clip_images", "sd_images"
)


class NanLossError(RuntimeError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


class DataExhaustedError(RuntimeError):
    """A rank's batch iterator ended before the planned number of steps."""


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next `step()` can be turned into a no-op.

    DeepSpeed's ZeRO and bf16 wrappers skip a step by themselves when the gradient norm is not
    finite; under ZeRO-0 with fp32 the client optimizer is called directly, so the loop sets
    `skip_next` there (and everywhere, for a NaN loss whose gradients happen to be finite).
    """

    skip_next = False

    @property
    def overflow(self) -> bool:
        """Read by DeepSpeed's engine after `step()`: a skipped step counts as not applied."""
        return self.skip_next

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        if self.skip_next:
            return None
        return super().step(closure)


@dataclass(frozen=True)
class StepMetrics:
    """Gang-wide numbers of one optimizer step (means over micro-batches and ranks)."""

    step: int
    loss: float
    lm_loss: float
    vm_loss: float
    lr: float
    grad_norm: float
    step_time_s: float
    data_wait_s: float  # of step_time_s: waiting for this rank's batches (pipeline behind?)
    tokens_per_s: float
    samples_per_s: float
    images_per_s: float
    samples_global: int
    nan_skipped: bool
    ended_at: float  # wall clock (epoch s) at the step's end: gaps include per-step reporting

    def as_dict(self) -> dict[str, float | int | bool]:
        """Plain dict for reporting (Ray metrics must not hold tensors)."""
        return dict(self.__dict__)


@dataclass
class LoopContext:
    """What every step needs; built once by the worker (or by a test)."""

    engine: Any
    optimizer: SkippableAdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accum: int
    lm_weight: float
    vm_weight: float
    max_consecutive_nan: int
    device: torch.device
    world_size: int
    compute_dtype: torch.dtype = torch.float32
    manual_grad_norm: bool = False  # ZeRO-0 + fp32: DeepSpeed records no gradient norm
    last_grad_norm: float = float("nan")
    data_wait_s: float = 0.0


def _all_reduce(t: torch.Tensor, world_size: int, op=None) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def to_device(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> dict:
    """The batch-contract tensors on `device`; pixel values in the compute dtype.

    Args:
        batch: a collated batch (extra keys are ignored; pixel values may be None or empty).
        device: the engine's device.
        dtype: the compute dtype for floating inputs.

    Returns:
        A dict with exactly `BATCH_KEYS`.
    """
    out = {}
    for key in BATCH_KEYS:
        value = batch.get(key)
        if key.endswith("pixel_values"):
            value = None if value is None or value.shape[0] == 0 else value.to(device, dtype)
        else:
            value = value.to(device)
        out[key] = value
    return out


def _next_or_none(batches: Iterator, ctx: LoopContext) -> Mapping[str, Any] | None:
    batch = next(batches, None)
    missing = torch.tensor([1.0 if batch is None else 0.0])
    if _all_reduce(missing, ctx.world_size).item() > 0:
        raise DataExhaustedError(
            "a rank's data iterator ended before the planned number of steps "
            "(data.num_samples larger than what the sources yield after skips?)"
        )
    return batch


def micro_step(ctx: LoopContext, batch: Mapping[str, Any], boundary: bool) -> torch.Tensor:
    """Forward, gang-wide NaN check, backward and `engine.step` of one micro-batch.

    Args:
        ctx: the loop context.
        batch: one collated micro-batch.
        boundary: whether DeepSpeed applies the update on this micro-batch.

    Returns:
        The all-reduced sums, in `_STATS` order.
    """
    inputs = to_device(batch, ctx.device, ctx.compute_dtype)
    out = ctx.engine(**inputs, lm_weight=ctx.lm_weight, vm_weight=ctx.vm_weight)
    finite = bool(torch.isfinite(out.loss).item())
    images = 0 if inputs["clip_pixel_values"] is None else inputs["clip_pixel_values"].shape[0]
    dreams = 0 if inputs["sd_pixel_values"] is None else inputs["sd_pixel_values"].shape[0]
    losses = [out.loss.item(), out.lm_loss.item(), out.vm_loss.item()] if finite else [0.0] * 3
    stats = torch.tensor(
        [*losses, 0.0 if finite else 1.0, float(inputs["attention_mask"].sum().item()),
         float(inputs["input_ids"].shape[0]), float(images), float(dreams)],
        dtype=torch.float64,
    )
    _all_reduce(stats, ctx.world_size)
    if stats[3] > 0:
        ctx.optimizer.skip_next = True
    # Backward even when poisoned: ZeRO's reduce/gather hooks are collectives that every rank
    # must enter; the update itself is skipped.
    ctx.engine.backward(out.loss)
    if boundary and ctx.manual_grad_norm:
        ctx.last_grad_norm = _local_grad_norm(ctx)
        if not math.isfinite(ctx.last_grad_norm):
            ctx.optimizer.skip_next = True
    ctx.engine.step()
    if boundary and not ctx.manual_grad_norm:
        norm = ctx.engine.get_global_grad_norm()
        ctx.last_grad_norm = float("nan") if norm is None else float(norm)
    return stats


def _local_grad_norm(ctx: LoopContext) -> float:
    # ZeRO-0 + fp32: the client optimizer runs directly and DeepSpeed records no norm; at the
    # boundary the gradients are already averaged over ranks, so the local norm is global.
    grads = [p.grad.detach().float() for p in ctx.engine.module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    return float(torch.linalg.vector_norm(norms))


def optimizer_step(ctx: LoopContext, batches: Iterator, state: TrainState) -> StepMetrics:
    """Run `ctx.accum` micro-batches: one optimizer step (or one skipped step).

    Args:
        ctx: the loop context.
        batches: this rank's micro-batch iterator.
        state: updated in place (step, samples, NaN counters).

    Returns:
        The step's gang-wide metrics.

    Raises:
        DataExhaustedError: when a rank runs out of batches.
        NanLossError: after `max_consecutive_nan` consecutive skipped steps.
    """
    start = time.perf_counter()
    lr = float(ctx.scheduler.get_last_lr()[0])
    totals = torch.zeros(len(_STATS), dtype=torch.float64)
    ctx.optimizer.skip_next = False
    ctx.last_grad_norm = float("nan")
    ctx.data_wait_s = 0.0
    for _ in range(ctx.accum):
        fetch = time.perf_counter()
        batch = _next_or_none(batches, ctx)
        ctx.data_wait_s += time.perf_counter() - fetch
        totals += micro_step(ctx, batch, ctx.engine.is_gradient_accumulation_boundary())
        state.samples_rank += int(batch["input_ids"].shape[0])
    skipped = ctx.optimizer.skip_next or not ctx.engine.was_step_applied()
    ctx.optimizer.skip_next = False
    with warnings.catch_warnings():
        # A skipped step never called optimizer.step(); the schedule advances on purpose.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        ctx.scheduler.step()
    return _finish_step(ctx, state, totals, lr, skipped, time.perf_counter() - start)


def _finish_step(ctx, state, totals, lr, skipped, elapsed) -> StepMetrics:
    grad_norm = ctx.last_grad_norm
    sums = dict(zip(_STATS, totals.tolist(), strict=True))
    micro = ctx.accum * ctx.world_size
    finite_micro = max(1.0, micro - sums["nonfinite"])
    skipped = skipped or not math.isfinite(grad_norm)
    state.step += 1
    state.samples_global += int(sums["samples"])
    state.nan_steps += int(skipped)
    state.consecutive_nan = state.consecutive_nan + 1 if skipped else 0
    if state.consecutive_nan >= ctx.max_consecutive_nan:
        raise NanLossError(
            f"{state.consecutive_nan} consecutive optimizer steps with a non-finite loss or "
            f"gradient (up to step {state.step}); stopping (optim.max_consecutive_nan_steps)"
        )
    return StepMetrics(
        step=state.step,
        loss=sums["loss"] / finite_micro,
        lm_loss=sums["lm_loss"] / finite_micro,
        vm_loss=sums["vm_loss"] / finite_micro,
        lr=lr,
        grad_norm=grad_norm,
        step_time_s=elapsed,
        data_wait_s=ctx.data_wait_s,
        tokens_per_s=sums["tokens"] / elapsed,
        samples_per_s=sums["samples"] / elapsed,
        images_per_s=(sums["clip_images"] + sums["sd_images"]) / elapsed,
        samples_global=state.samples_global,
        nan_skipped=skipped,
        ended_at=time.time(),
    )


def run_steps(
    ctx: LoopContext,
    batches: Iterator[Mapping[str, Any]],
    state: TrainState,
    until_step: int,
    on_step: Callable[[StepMetrics, TrainState], None] | None = None,
) -> TrainState:
    """Take optimizer steps until `state.step == until_step`.

    Args:
        ctx: the loop context.
        batches: this rank's micro-batches, positioned at `state`'s data cursor.
        state: where the stage stands; updated in place.
        until_step: the step to stop at (the stage's total, or fewer in tests).
        on_step: called after every step (metrics, checkpoints, fault injection).

    Returns:
        `state`, after the last step.

    Raises:
        DataExhaustedError, NanLossError: see `optimizer_step`.
    """
    ctx.engine.train()
    while state.step < until_step:
        metrics = optimizer_step(ctx, batches, state)
        if on_step is not None:
            on_step(metrics, state)
    return state
