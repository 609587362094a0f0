"""Memory plan: true parameter counts of the real 7B towers on the meta device, the ZeRO formula
(ordering, DeepSpeed's estimators), the dry-run hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dreamray.config import load_recipe
from dreamray.config.specs import DeepSpeedSpec
from dreamray.model import memory
from dreamray.model.meta import build_dreamllm_on_meta
from dreamray.zoo import build_real_configs

REPO = Path(__file__).resolve().parents[2]
RECIPE_7B = REPO / "pipelines" / "recipes" / "dreamllm_7b.yaml"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(str(RECIPE_7B), {}, check_paths=False)


@pytest.fixture(scope="module")
def real_counts(tmp_path_factory, recipe):
    dirs = build_real_configs(tmp_path_factory.mktemp("real"))
    spec = recipe.stages["sft"].model
    model = build_dreamllm_on_meta(dirs.llm, dirs.vision, dirs.diffusion, spec)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    return memory.count_model(model)


def _near(value: int, want: float, rel: float = 0.02) -> bool:
    return abs(value - want) <= rel * want


def test_real_architecture_counts(real_counts):
    g = real_counts.by_group
    assert g["embed_tokens"] == g["lm_head"] == 32008 * 4096  # Vicuna 32000 + DreamLLM's 8
    assert _near(g["llm"] + g["embed_tokens"] + g["lm_head"], 6.7e9)
    assert _near(g["vision_encoder"], 0.30e9)
    assert _near(g["unet"], 0.87e9)
    assert _near(g["vae"], 84e6)
    assert g["vision_projector"] == 1024 * 4096 + 4096  # Linear(1024 -> 4096, bias)
    assert g["condition_projector"] == 4096 * 1024  # Linear(4096 -> 1024), no bias
    assert g["dream_queries"] == 64 * 4096
    assert real_counts.largest_layer["embed_tokens"] == 32008 * 4096


def _spec(zero: int, precision: str = "bf16", **offload) -> DeepSpeedSpec:
    return DeepSpeedSpec(
        zero_stage=zero, precision=precision, global_batch_size=8, micro_batch_per_gpu=1, **offload
    )


def test_zero_stages_shrink_the_trainable_part(real_counts, recipe):
    trainable = recipe.stages["stage2"].trainable
    plans = {z: memory.plan_memory(real_counts, trainable, _spec(z), 8) for z in (0, 1, 2, 3)}
    per_gpu = {z: plan.parts()["trainable"][1] for z, plan in plans.items()}
    assert per_gpu[3].gpu < per_gpu[2].gpu < per_gpu[1].gpu < per_gpu[0].gpu
    # one GPU: nothing to partition, the same bytes at every stage past 0
    alone = [memory.trainable_state_bytes(1000, _spec(z), 1).gpu for z in (1, 2, 3)]
    assert alone == [20000.0] * 3


def test_frozen_parts_carry_params_only(real_counts, recipe):
    stage1 = recipe.stages["stage1_creation"].trainable
    plan2 = memory.plan_memory(real_counts, stage1, _spec(2), world_size=128)
    plan3 = memory.plan_memory(real_counts, stage1, _spec(3), world_size=128)
    n_frozen, frozen2 = plan2.parts()["frozen in engine"]
    assert frozen2.gpu == frozen2.params == 2 * n_frozen  # the LLM, replicated in bf16
    assert plan3.parts()["frozen in engine"][1].params == 2 * n_frozen / 128
    n_towers, towers = plan3.parts()["frozen towers"]
    assert towers.gpu == 2 * n_towers and plan3.tower_groups == ("vision_encoder", "unet", "vae")
    assert set(plan2.trainable_counts) == {"dream_queries", "condition_projector"}


def test_formula_agrees_with_deepspeeds_estimators(real_counts):
    stage_1_and_2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    n, largest, gpus, nodes = 6_747_000_000, real_counts.largest_layer["lm_head"], 8, 16
    w = gpus * nodes
    _, ds2 = stage_1_and_2.estimate_zero2_model_states_mem_needs(n, gpus, nodes, cpu_offload=False)
    assert memory.trainable_state_bytes(n, _spec(2), w).gpu == pytest.approx(ds2, abs=1)
    _, ds2_off = stage_1_and_2.estimate_zero2_model_states_mem_needs(n, gpus, nodes)
    offloaded = memory.trainable_state_bytes(n, _spec(2, offload_optimizer=True), w)
    assert offloaded.gpu == ds2_off
    _, ds3, _ = estimate_zero3_model_states_mem_needs(n, largest, gpus, nodes, cpu_offload=False)
    ours3 = memory.trainable_state_bytes(n, _spec(3), w).gpu + 4 * largest
    assert ours3 == pytest.approx(ds3 + 2 * n / w, abs=1)  # + the 16-bit grad partition


def test_dry_run_hook_plans_the_real_towers_for_the_declared_scaling(recipe):
    lines = memory.describe_stage_plan(recipe.stages["stage2"], shapes_only=True)
    text = "\n".join(lines)
    assert lines[0].startswith("params / memory plan")
    assert "ZeRO-2 bf16, 128 GPUs" in text and f"{131_104_768:,}" in text
    plan = memory.plan_stage_memory(recipe.stages["stage2"], memory.real_config_dirs())
    assert plan.per_gpu_bytes == pytest.approx(
        sum(s.gpu for _, s in plan.parts().values()), rel=1e-12
    )
    missing = memory.describe_stage_plan(recipe.stages["stage2"], shapes_only=False)
    assert missing[0].startswith("params / memory plan: not available")  # /path/to/... dirs


def test_tower_groups_match_the_train_engine_and_modules_stay_pure():
    from dreamray.train.engine import TOWER_GROUPS

    assert memory.TOWER_GROUPS == TOWER_GROUPS
    modules = ["generation", "interleaved", "sampling", "memory", "meta"]
    code = (
        "import sys\n"
        + "".join(f"import dreamray.model.{m}\n" for m in modules)
        + "print([m for m in ('ray', 'deepspeed') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
