"""A precompute stage in the DAG on the shared local Ray cluster: it runs once (a Ray Data
actor pool over the tiny shards) and feeds both stage-I branches, which then train on its
features (2 workers each, ZeRO-2) and merge; a re-run skips everything, and a precompute run
again in the same artifact dir keeps every shard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from dreamray.config.load import load_recipe
from dreamray.data.mixing import shard_files
from dreamray.orchestration.context import StageContext
from dreamray.orchestration.executors import default_executors
from dreamray.orchestration.precompute import RESULTS_FILE, run_precompute_stage
from dreamray.orchestration.ray_backend import RayBackend
from dreamray.orchestration.runner import DagRunner

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
STAGE_ONE = ("stage1_comprehension", "stage1_creation")
TARGETS = ["features", *STAGE_ONE, "merge"]

pytestmark = pytest.mark.slow  # three Ray Train gangs' worth of start-up


def _features_recipe(tmp_path: Path) -> Path:
    """tiny.yaml up to the merge, with a `features` precompute stage over both stage-I
    branches' sources."""
    raw = yaml.safe_load((REPO / "pipelines" / "recipes" / "tiny.yaml").read_text())
    raw["stages"] = {n: s for n, s in raw["stages"].items() if n in TARGETS}
    sources = {}
    for name in STAGE_ONE:
        for src in raw["stages"][name]["data"]["sources"]:
            sources[src["name"]] = src["path"]
        raw["stages"][name]["needs"] = ["features"]
        raw["stages"][name]["data"]["features"] = "stage:features"
    raw["stages"]["features"] = {
        "kind": "precompute",
        "precompute": {"sources": [{"name": n, "path": p} for n, p in sources.items()],
                       "batch_size": 8},
        "scaling": {"num_workers": 2},
    }
    path = tmp_path / "tiny_features.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def recipe(tiny_zoo, tmp_path_factory):
    from dreamray.data.tiny import build_tiny_data

    root = tmp_path_factory.mktemp("tiny")
    build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
    overrides = {
        "root": str(root),
        "stage_defaults.model.llm_path": str(tiny_zoo.llm),
        "stage_defaults.model.vision_path": str(tiny_zoo.vision),
        "stage_defaults.model.diffusion_path": str(tiny_zoo.diffusion),
        "stage_defaults.scaling.num_workers": 2,
    }
    return load_recipe(_features_recipe(root), overrides=overrides)


@pytest.fixture(scope="module")
def runs(ray_cluster, recipe, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")

    def run():
        return DagRunner(recipe, str(run_dir), RayBackend(recipe.name), default_executors(),
                         targets=TARGETS, poll_s=0.2).run()

    return run(), run(), run_dir


def test_the_precompute_runs_once_and_feeds_both_branches(runs, recipe):
    first, second, _ = runs
    assert all(first.states[n] == "done" for n in TARGETS), first.states
    metrics = first.records["features"].metrics
    num_shards = sum(len(shard_files(s.path)) for s in recipe.stages["features"].precompute.sources)
    assert metrics["shards"] == metrics["shards_made"] == num_shards > 0
    assert metrics["images"] > 0 and metrics["images_per_s"] > 0
    for name in STAGE_ONE:
        record = first.records[name]
        assert record.steps == recipe.stages[name].total_steps
    assert first.records["stage1_creation"].metrics["vm_loss"] > 0
    assert first.records["stage1_comprehension"].metrics["lm_loss"] > 0
    assert all(second.states[n] == "skipped" for n in TARGETS), second.states


def test_a_precompute_run_again_keeps_its_shards(runs, recipe, tmp_path):
    first, _, run_dir = runs
    artifact = Path(first.records["features"].artifact.removeprefix("file://"))
    artifact = artifact if artifact.is_absolute() else run_dir / artifact
    ctx = StageContext(name="features", identity="again", spec_hash="again",
                       artifact_dir=str(artifact), train_storage=str(tmp_path),
                       train_run_name="features")
    outcome = run_precompute_stage(recipe.stages["features"], ctx)
    assert outcome.metrics["shards_kept"] == outcome.metrics["shards"]
    assert outcome.metrics["shards_made"] == outcome.metrics["shards_remade"] == 0
    results = json.loads((artifact / RESULTS_FILE).read_text())
    assert {r["status"] for r in results["shards"]} == {"kept"}
