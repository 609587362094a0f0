"""DeepSpeedSpec -> DeepSpeed's config dict: one pure function, no deepspeed import.

Precision: `bf16` means bf16 compute with fp32 master weights and fp32 optimizer state.
DeepSpeed's bf16 path does exactly this by default (ZeRO 1-3 keep an fp32 partition of every
trainable parameter; ZeRO 0 goes through its BF16_Optimizer, which does the same); we never set
`bf16_master_weights_and_grads` / `bf16_optimizer_states`, which would reproduce the
reference's pure-bf16 optimizer state quirk. `fp32` is the fastest choice on CPU.

The optimizer is never named here: the train loop hands DeepSpeed a client
`torch.optim.AdamW` (DeepSpeed's FusedAdam/CPUAdam JIT-build for ~40 s on CPU), and the
scheduler is ours too, so neither `optimizer` nor `scheduler` keys appear unless a recipe puts
them in `overrides`.
"""

from __future__ import annotations

from typing import Any

from dreamray.config.load import deep_merge
from dreamray.config.specs import DeepSpeedSpec

# DeepSpeed prints a throughput line every `steps_per_print` steps; our own metrics replace it.
_QUIET_STEPS = 1 << 30


def train_batch_size(spec: DeepSpeedSpec, world_size: int, grad_accumulation_steps: int) -> int:
    """The global batch: micro batch x accumulation x world size, checked against the spec.

    Args:
        spec: the stage's DeepSpeed spec.
        world_size: data-parallel ranks.
        grad_accumulation_steps: micro-steps per optimizer step.

    Returns:
        Samples per optimizer step over all ranks.

    Raises:
        ValueError: if the product differs from `spec.global_batch_size` or a factor is < 1.
    """
    if world_size < 1 or grad_accumulation_steps < 1:
        raise ValueError(
            f"world_size={world_size} and grad_accumulation_steps={grad_accumulation_steps} "
            "must both be >= 1"
        )
    total = spec.micro_batch_per_gpu * grad_accumulation_steps * world_size
    if total != spec.global_batch_size:
        raise ValueError(
            f"micro_batch_per_gpu x grad_accumulation_steps x world_size = "
            f"{spec.micro_batch_per_gpu} x {grad_accumulation_steps} x {world_size} = {total} "
            f"!= deepspeed.global_batch_size={spec.global_batch_size}"
        )
    return total


def _precision_section(precision: str) -> dict[str, Any]:
    if precision == "bf16":
        return {"bf16": {"enabled": True}, "fp16": {"enabled": False}}
    if precision == "fp16":
        # loss_scale 0 = dynamic loss scaling, the only sane fp16 default.
        return {"fp16": {"enabled": True, "loss_scale": 0}, "bf16": {"enabled": False}}
    return {"fp16": {"enabled": False}, "bf16": {"enabled": False}}


def _zero_section(spec: DeepSpeedSpec) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.zero_stage >= 1:
        # Overlap and bucket defaults are fine; contiguous gradients reduce fragmentation.
        zero["contiguous_gradients"] = True
        zero["overlap_comm"] = False
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if spec.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if spec.zero_stage == 3:
        # The artifact is exported from fp32 master weights by the train loop, not by
        # DeepSpeed's 16-bit consolidated save.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return zero


def deepspeed_config(
    spec: DeepSpeedSpec, *, world_size: int, grad_accumulation_steps: int
) -> dict[str, Any]:
    """Build the config dict passed to `deepspeed.initialize(config=...)`.

    Args:
        spec: the stage's DeepSpeed spec (zero stage, precision, batch, clipping, offload,
            overrides).
        world_size: data-parallel ranks of the gang.
        grad_accumulation_steps: micro-steps per optimizer step.

    Returns:
        A fresh JSON-serialisable dict; `spec.overrides` is deep-merged over it last.

    Raises:
        ValueError: if the batch triple is inconsistent with `spec.global_batch_size`.
    """
    config: dict[str, Any] = {
        "train_batch_size": train_batch_size(spec, world_size, grad_accumulation_steps),
        "train_micro_batch_size_per_gpu": spec.micro_batch_per_gpu,
        "gradient_accumulation_steps": grad_accumulation_steps,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": _zero_section(spec),
        # A client torch.optim.AdamW is what we pass; with ZeRO it is supported, but with
        # offload DeepSpeed would refuse a non-DeepSpeed CPU optimizer unless told otherwise.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
        **_precision_section(spec.precision),
    }
    return deep_merge(config, spec.overrides)
