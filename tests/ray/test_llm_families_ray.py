"""One tiny train stage per base-LLM family (Llama, Mistral, Qwen2) through Ray Train: the tiny
recipe's comprehension stage with the LLM's decoder trainable, on the shared local cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dreamray.config.load import load_recipe
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.groups import parameters_by_group
from dreamray.orchestration.launcher import run_train_stage
from dreamray.zoo import LLM_FAMILIES, build_tiny_llm

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
STAGE = "stage1_comprehension"
# `make test-slow`: several minutes of Ray Train gangs on 2 cores, beyond `make test`'s budget.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals

    root = tmp_path_factory.mktemp("families")
    build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
    build_tiny_evals(root / ".cache" / "tiny" / "evals")
    return root


def _recipe(root: Path, zoo, llm: Path):
    overrides = {
        "root": str(root),
        "stage_defaults.model.llm_path": str(llm),
        "stage_defaults.model.vision_path": str(zoo.vision),
        "stage_defaults.model.diffusion_path": str(zoo.diffusion),
        "stage_defaults.scaling.num_workers": 1,
        f"stages.{STAGE}.trainable": ["llm", "vision_projector"],
        f"stages.{STAGE}.data.num_samples": 8,
    }
    return load_recipe(REPO / "pipelines" / "recipes" / "tiny.yaml", overrides=overrides)


def _llm_sum(model) -> float:
    return sum(float(p.detach().double().abs().sum()) for _, p in parameters_by_group(model)["llm"])


@pytest.mark.parametrize("family", LLM_FAMILIES, ids=lambda f: f.name)
def test_a_train_stage_runs_for_each_family(ray_cluster, tiny_zoo, data_root, family, tmp_path):
    llm = build_tiny_llm(tmp_path / "llm", seed=0, family=family)
    stage = _recipe(data_root, tiny_zoo, llm).stages[STAGE]
    storage = tmp_path / "runs"
    out = run_train_stage(stage, name=STAGE, storage_path=str(storage), run_name=STAGE,
                          artifact_dir=str(storage / "artifacts" / STAGE), inputs={})
    assert out.steps == stage.total_steps and all(r["loss"] == r["loss"] for r in out.history)
    trained = DreamLLM.from_pretrained(out.artifact_dir)
    assert trained.llm.config.model_type == family.name
    from dreamray.model.build import build_dreamllm

    torch.manual_seed(0)
    base = build_dreamllm(stage.model)
    assert _llm_sum(trained) != _llm_sum(base)  # the family's decoder layers were updated
