"""The loop core: optimizer steps of a DeepSpeed engine over an iterator of batches.

No Ray and no process-group setup here: `run_steps` is what the Ray worker runs and what the
in-process tests run with world size 1. One optimizer step = `accum` micro-batches, each
forward -> `engine.backward` -> `engine.step` (DeepSpeed applies the update on the last one).

Loss normalisation (`loss.normalization: step`): the step's `accum` micro-batches are fetched
first and their supervised tokens and dream images counted and summed over the gang; each
micro-batch then backpropagates its loss sums divided by those step totals, times
`accum x world_size` because DeepSpeed divides by `accum` and the ranks average. The step's
gradient is thus the per-token (per-image) mean over the whole step, the same for any split
into micro-batches and ranks. `micro_batch` backpropagates each micro-batch's own mean (the
reference's behaviour).

Collectives (gloo/NCCL, tiny tensors): per step, "does every rank have its batches" plus the
counts, so that a rank that ran out of data stops every rank instead of hanging them; per
micro-step, the sums of losses and counts, which give gang-wide metrics and one gang-wide NaN
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

from dreamray.config.specs import LossNormalization
from dreamray.data.collate import (
    CLIP_FEATURES,
    FEATURE_KEYS,
    POSITION_IDS,
    SD_MOMENTS,
    count_samples,
)
from dreamray.model.losses import supervised_token_count
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
    """Gang-wide numbers of one optimizer step.

    The losses are weighted like the step's gradient (see the module docstring); `lm_loss` is
    None for a step without supervised tokens and `vm_loss` for one without dream images.
    """

    step: int
    loss: float
    lm_loss: float | None
    vm_loss: float | None
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
        """Plain dict for reporting (Ray metrics must not hold tensors); a loss the step did
        not have is left out rather than logged as 0."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class StepCounts:
    """Gang-wide denominators of one optimizer step, counted before its first backward."""

    lm_tokens: float
    dream_images: float


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
    normalization: LossNormalization = "step"
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
        A dict with exactly `BATCH_KEYS`, plus ``position_ids`` for a packed batch and the
        precomputed ``clip_features`` / ``sd_latent_moments`` of a features batch. Those keep
        their stored dtype (the model casts them where the tower's output would be cast) and
        stay present when empty: they tell the model not to run the towers at all.
    """
    out = {}
    for key in BATCH_KEYS:
        value = batch.get(key)
        if key.endswith("pixel_values"):
            value = None if value is None or value.shape[0] == 0 else value.to(device, dtype)
        else:
            value = value.to(device)
        out[key] = value
    for key in (POSITION_IDS, *FEATURE_KEYS):
        if batch.get(key) is not None:
            out[key] = batch[key].to(device)
    return out


def _dream_count(batch: Mapping[str, Any]) -> int:
    return int(sum(batch[k].shape[0] for k in ("sd_pixel_values", SD_MOMENTS)
                   if batch.get(k) is not None))


def _image_count(inputs: Mapping[str, Any]) -> int:
    return int(sum(inputs[k].shape[0] for k in ("clip_pixel_values", CLIP_FEATURES)
                   if inputs.get(k) is not None))


def fetch_step(ctx: LoopContext, batches: Iterator) -> tuple[list[Mapping[str, Any]], StepCounts]:
    """This rank's `accum` micro-batches of the next step and the step's gang-wide counts.

    Args:
        ctx: the loop context.
        batches: this rank's micro-batch iterator.

    Returns:
        ``(micro_batches, counts)``: supervised tokens and dream images summed over every
        micro-batch of every rank (one all-reduce, also telling whether any rank ran dry).

    Raises:
        DataExhaustedError: when any rank's iterator ends before `accum` batches.
    """
    fetched = [next(batches, None) for _ in range(ctx.accum)]
    present = [b for b in fetched if b is not None]
    local = torch.tensor(
        [float(len(present) < ctx.accum),
         float(sum(int(supervised_token_count(b["labels"])) for b in present)),
         float(sum(_dream_count(b) for b in present))],
        dtype=torch.float64,
    )
    _all_reduce(local, ctx.world_size)
    if local[0].item() > 0:
        raise DataExhaustedError(
            "a rank's data iterator ended before the planned number of steps "
            "(data.num_samples larger than what the sources yield after skips?)"
        )
    return present, StepCounts(lm_tokens=local[1].item(), dream_images=local[2].item())


def _loss_terms(ctx: LoopContext, out: Any, counts: StepCounts) -> tuple[torch.Tensor, list]:
    """The loss to backpropagate and this micro-batch's logged (loss, lm, vm) terms."""
    if ctx.normalization == "micro_batch":
        return out.loss, [out.loss, out.lm_loss, out.vm_loss]
    lm = out.lm_loss_sum / max(counts.lm_tokens, 1.0)
    vm = out.vm_loss_sum / max(counts.dream_images, 1.0)
    share = ctx.lm_weight * lm + ctx.vm_weight * vm  # this micro-batch's part of the step loss
    # DeepSpeed divides by the accumulation steps and the ranks average: undo both.
    return share * (ctx.accum * ctx.world_size), [share, lm, vm]


def micro_step(
    ctx: LoopContext, batch: Mapping[str, Any], boundary: bool, counts: StepCounts
) -> torch.Tensor:
    """Forward, gang-wide NaN check, backward and `engine.step` of one micro-batch.

    Args:
        ctx: the loop context.
        batch: one collated micro-batch.
        boundary: whether DeepSpeed applies the update on this micro-batch.
        counts: the step's gang-wide counts (the `step` normalisation's denominators).

    Returns:
        The all-reduced sums, in `_STATS` order.
    """
    inputs = to_device(batch, ctx.device, ctx.compute_dtype)
    out = ctx.engine(**inputs, lm_weight=ctx.lm_weight, vm_weight=ctx.vm_weight)
    loss, terms = _loss_terms(ctx, out, counts)
    finite = bool(torch.isfinite(loss).item())
    images = _image_count(inputs)
    logged = [float(t.item()) for t in terms] if finite else [0.0] * 3
    stats = torch.tensor(
        [*logged, 0.0 if finite else 1.0, float(inputs["attention_mask"].sum().item()),
         float(count_samples(inputs)), float(images), float(_dream_count(batch))],
        dtype=torch.float64,
    )
    _all_reduce(stats, ctx.world_size)
    if stats[3] > 0:
        ctx.optimizer.skip_next = True
    # Backward even when poisoned: ZeRO's reduce/gather hooks are collectives that every rank
    # must enter; the update itself is skipped.
    ctx.engine.backward(loss)
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
    micro_batches, counts = fetch_step(ctx, batches)
    ctx.data_wait_s = time.perf_counter() - start
    for batch in micro_batches:
        totals += micro_step(ctx, batch, ctx.engine.is_gradient_accumulation_boundary(), counts)
        state.samples_rank += count_samples(batch)
    skipped = ctx.optimizer.skip_next or not ctx.engine.was_step_applied()
    ctx.optimizer.skip_next = False
    with warnings.catch_warnings():
        # A skipped step never called optimizer.step(); the schedule advances on purpose.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        ctx.scheduler.step()
    sums = dict(zip(_STATS, totals.tolist(), strict=True))
    return _finish_step(ctx, state, sums, counts, lr, skipped, time.perf_counter() - start)


def _step_losses(ctx: LoopContext, sums: dict, counts: StepCounts) -> tuple:
    """(loss, lm_loss, vm_loss) of the step, weighted as its gradient is."""
    values = [sums["loss"], sums["lm_loss"], sums["vm_loss"]]
    if ctx.normalization == "micro_batch":
        finite_micro = max(1.0, ctx.accum * ctx.world_size - sums["nonfinite"])
        values = [v / finite_micro for v in values]
    loss, lm, vm = values
    return loss, lm if counts.lm_tokens > 0 else None, vm if counts.dream_images > 0 else None


def _finish_step(ctx, state, sums, counts, lr, skipped, elapsed) -> StepMetrics:
    grad_norm = ctx.last_grad_norm
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
    loss, lm_loss, vm_loss = _step_losses(ctx, sums, counts)
    return StepMetrics(
        step=state.step,
        loss=loss,
        lm_loss=lm_loss,
        vm_loss=vm_loss,
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
