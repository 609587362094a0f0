"""DeepSpeedSpec -> DeepSpeed config dict (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dreamray.config.specs import DeepSpeedSpec
from dreamray.train.ds_config import deepspeed_config, train_batch_size


def _spec(**kw) -> DeepSpeedSpec:
    base = {"global_batch_size": 8, "micro_batch_per_gpu": 2}
    return DeepSpeedSpec(**{**base, **kw})


def test_batch_triple_and_clipping():
    cfg = deepspeed_config(_spec(grad_clip=0.5), world_size=2, grad_accumulation_steps=2)
    assert cfg["train_batch_size"] == 8
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["gradient_clipping"] == 0.5
    assert "optimizer" not in cfg and "scheduler" not in cfg


def test_inconsistent_batch_raises():
    with pytest.raises(ValueError, match="global_batch_size=8"):
        deepspeed_config(_spec(), world_size=2, grad_accumulation_steps=1)
    with pytest.raises(ValueError, match=">= 1"):
        train_batch_size(_spec(), world_size=0, grad_accumulation_steps=1)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage(stage):
    cfg = deepspeed_config(_spec(zero_stage=stage), world_size=4, grad_accumulation_steps=1)
    assert cfg["zero_optimization"]["stage"] == stage
    assert ("stage3_gather_16bit_weights_on_model_save" in cfg["zero_optimization"]) == (
        stage == 3
    )


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"),
    [("bf16", True, False), ("fp16", False, True), ("fp32", False, False)],
)
def test_precision(precision, bf16, fp16):
    cfg = deepspeed_config(_spec(precision=precision), world_size=1, grad_accumulation_steps=4)
    assert cfg["bf16"]["enabled"] is bf16
    assert cfg["fp16"]["enabled"] is fp16
    # fp32 master weights: the pure-bf16 optimizer switches are never turned on.
    assert "bf16_master_weights_and_grads" not in cfg["bf16"]


def test_offload_sections():
    cfg = deepspeed_config(
        _spec(zero_stage=3, offload_optimizer=True, offload_params=True),
        world_size=1,
        grad_accumulation_steps=4,
    )
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    cfg = deepspeed_config(_spec(), world_size=1, grad_accumulation_steps=4)
    assert "offload_optimizer" not in cfg["zero_optimization"]


def test_offload_needs_zero():
    with pytest.raises(ValidationError, match="offload_params needs zero_stage 3"):
        _spec(zero_stage=2, offload_params=True)
    with pytest.raises(ValidationError, match="offload_optimizer needs zero_stage >= 1"):
        _spec(zero_stage=0, offload_optimizer=True)


def test_overrides_deep_merged_last():
    spec = _spec(
        overrides={"zero_optimization": {"reduce_bucket_size": 123}, "gradient_clipping": 0.0}
    )
    cfg = deepspeed_config(spec, world_size=1, grad_accumulation_steps=4)
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 123
    assert cfg["zero_optimization"]["stage"] == 2  # merged, not replaced
    assert cfg["gradient_clipping"] == 0.0


def test_pure_and_fresh():
    spec = _spec(overrides={"zero_optimization": {"x": 1}})
    a = deepspeed_config(spec, world_size=1, grad_accumulation_steps=4)
    a["zero_optimization"]["x"] = 2
    b = deepspeed_config(spec, world_size=1, grad_accumulation_steps=4)
    assert b["zero_optimization"]["x"] == 1
    assert spec.overrides == {"zero_optimization": {"x": 1}}


def test_module_imports_no_deepspeed():
    import subprocess
    import sys

    code = (
        "import sys, dreamray.train.ds_config, dreamray.train\n"
        "print(','.join(m for m in ('ray', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
