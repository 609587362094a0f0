"""The stage launcher on the shared local Ray cluster: the tiny recipe's four train stages (2
workers, ZeRO-2, the Ray Data pipeline over synthetic shards) and a worker killed mid-stage.

Fits are expensive (10-14 s of fixed cost each), so the module runs each stage once and the
tests read the outcomes.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from dreamray.config.load import load_recipe
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.groups import GROUP_NAMES, parameters_by_group
from dreamray.orchestration.context import StageContext
from dreamray.orchestration.launcher import StagePreempted, run_train_stage
from dreamray.orchestration.merge import run_merge_stage
from dreamray.orchestration.preflight import StageCheckError, check_train_stage, resolve_init
from dreamray.orchestration.train_data import data_state_of, latest_checkpoint
from dreamray.train.engine import build_stage_model
from dreamray.train.faults import FAULT_ENV
from dreamray.train.preemption import PREEMPT_FILE, preempt_request

REPO = Path(__file__).resolve().parents[2]
# Set at collection, before the session's Ray cluster starts: Train's controller polls workers
# this often (the default 2 s adds seconds to every fit and to failure detection).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
TRAIN_ORDER = ("stage1_comprehension", "stage1_creation", "stage2", "sft")


@pytest.fixture(scope="module")
def recipe(tiny_zoo, tmp_path_factory):
    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals

    root = tmp_path_factory.mktemp("tiny")
    build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
    build_tiny_evals(root / ".cache" / "tiny" / "evals")  # the recipe's eval stages read them
    overrides = {
        "root": str(root),
        "stage_defaults.model.llm_path": str(tiny_zoo.llm),
        "stage_defaults.model.vision_path": str(tiny_zoo.vision),
        "stage_defaults.model.diffusion_path": str(tiny_zoo.diffusion),
        "stage_defaults.scaling.num_workers": 2,
    }
    return load_recipe(REPO / "pipelines" / "recipes" / "tiny.yaml", overrides=overrides)


def _train(recipe, name, storage, artifacts, run_name=None):
    stage = recipe.stages[name]
    inputs = {ref: str(artifacts[ref]) for ref in stage.input_stages()}
    out = run_train_stage(stage, name=name, storage_path=str(storage), run_name=run_name or name,
                          artifact_dir=str(storage / "artifacts" / name), inputs=inputs)
    artifacts[name] = Path(out.artifact_dir)
    return out, inputs


def _merge(recipe, storage, artifacts):
    name = "merge"
    ctx = StageContext(name=name, identity="test", spec_hash="test",
                       artifact_dir=str(storage / "artifacts" / name), train_storage=str(storage),
                       train_run_name=name, inputs={n: str(artifacts[n]) for n in
                                                    recipe.stages[name].input_stages()})
    artifacts[name] = Path(run_merge_stage(recipe.stages[name], ctx).artifact_dir)


@pytest.fixture(scope="module")
def trained(ray_cluster, recipe, tmp_path_factory):
    os.environ.pop(FAULT_ENV, None)
    storage = tmp_path_factory.mktemp("runs")
    artifacts, outcomes = {}, {}
    for name in TRAIN_ORDER:
        if name == "stage2":
            _merge(recipe, storage, artifacts)
        outcomes[name] = _train(recipe, name, storage, artifacts)
    return storage, outcomes


def _checksums(model) -> dict[str, float]:
    return {g: sum(float(p.detach().double().sum()) + float(p.detach().double().abs().sum())
                   for _, p in ps) for g, ps in parameters_by_group(model).items()}


@pytest.mark.parametrize("name", TRAIN_ORDER)
def test_stage_trains_exactly_its_groups(recipe, trained, name):
    stage = recipe.stages[name]
    out, inputs = trained[1][name]
    planned = stage.total_steps
    assert out.steps == planned and out.samples == planned * stage.deepspeed.global_batch_size
    assert len(out.history) == planned and all(r["loss"] == r["loss"] for r in out.history)
    torch.manual_seed(stage.seed)
    before = _checksums(build_stage_model(resolve_init(stage, inputs)))
    after = _checksums(DreamLLM.from_pretrained(out.artifact_dir))
    assert {g for g in GROUP_NAMES if before[g] != after[g]} == set(stage.trainable)
    assert (Path(out.artifact_dir) / "stage.json").is_file()
    assert (Path(trained[0]) / name / "tensorboard").is_dir()


def test_killed_worker_resumes_to_the_planned_step(recipe, trained, monkeypatch):
    storage, outcomes = trained
    name = "stage1_comprehension"
    stage = recipe.stages[name]
    monkeypatch.setenv(FAULT_ENV, "3")  # after step 3; the last checkpoint is after step 2
    out, _ = _train(recipe, name, storage, {}, run_name="comprehension-killed")
    run_dir = storage / "comprehension-killed"
    assert (run_dir / "fault_fired_step3").is_file()  # the fault did fire
    planned = stage.total_steps
    assert out.steps == planned and out.samples == planned * stage.deepspeed.global_batch_size
    data = data_state_of(latest_checkpoint(str(run_dir)))
    # every consumed position once: the consumed set is exactly as large as the count
    assert data.counters.samples == out.samples
    assert len(data.consumed) == data.counters.samples + data.counters.num_skipped
    reference = {r["step"]: r["loss"] for r in outcomes[name][0].history}
    resumed = {r["step"]: r["loss"] for r in out.history}
    assert resumed[3] == pytest.approx(reference[3], rel=1e-6)
    assert resumed[planned] == pytest.approx(reference[planned], rel=1e-6)


# Two more fits (~100 s): the `faults` tier. The unit tier checks the same fallback in process
# (test_train_inprocess.py::test_damaged_*).
@pytest.mark.faults
def test_damaged_final_checkpoint_falls_back_to_the_previous_one(recipe, trained):
    storage, outcomes = trained
    name = "stage1_comprehension"
    stage = recipe.stages[name]
    _train(recipe, name, storage, {}, run_name="comprehension-damaged")
    run_dir = storage / "comprehension-damaged"
    final = Path(latest_checkpoint(str(run_dir)).path)
    shard = max((p for p in (final / "ds").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])  # a torn upload
    out, _ = _train(recipe, name, storage, {}, run_name="comprehension-damaged")
    (event, detail), = out.events
    assert event == "checkpoint_fallback" and detail.startswith(final.name)
    assert "100 bytes" in detail
    planned = stage.total_steps
    assert out.steps == planned and out.samples == planned * stage.deepspeed.global_batch_size
    reference = {r["step"]: r["loss"] for r in outcomes[name][0].history}
    retrained = {r["step"]: r["loss"] for r in out.history if r["ended_at"] > final.stat().st_mtime}
    assert min(retrained) == 3  # resumed from the step-2 checkpoint, not from scratch
    assert retrained[planned] == pytest.approx(reference[planned], rel=1e-6)
    data = data_state_of(latest_checkpoint(str(run_dir)))
    assert data.counters.samples == out.samples
    assert len(data.consumed) == data.counters.samples + data.counters.num_skipped


# Two more fits per case (~115 s): the `faults` tier. The unit tier checks the same stop and
# re-run in process (test_train_inprocess.py::test_a_preemption_request_*). stage2 trains packed
# rows (tiny.yaml's data.packing): its re-run must continue exactly too.
@pytest.mark.faults
@pytest.mark.parametrize("name", ["stage1_comprehension", "stage2"])
def test_a_preemption_request_stops_the_gang_at_a_step_and_the_rerun_finishes(recipe, trained,
                                                                              name):
    storage, outcomes = trained
    artifacts = {ref: Path(path) for ref, path in outcomes[name][1].items()}
    run_dir = storage / f"{name}-preempted"

    def ask_once_the_run_starts():  # the launcher clears old requests before fit() starts
        deadline = time.time() + 120
        while not run_dir.is_dir() and time.time() < deadline:
            time.sleep(0.05)
        (run_dir / PREEMPT_FILE).write_text(preempt_request("test"))

    asker = threading.Thread(target=ask_once_the_run_starts, daemon=True)
    asker.start()
    with pytest.raises(StagePreempted, match=r"after step 1 with a checkpoint.*re-submit"):
        _train(recipe, name, storage, dict(artifacts), run_name=run_dir.name)
    asker.join()
    out, _ = _train(recipe, name, storage, dict(artifacts), run_name=run_dir.name)
    planned = recipe.stages[name].total_steps
    assert out.steps == planned and not (run_dir / PREEMPT_FILE).exists()
    reference = {r["step"]: r["loss"] for r in outcomes[name][0].history}
    assert {r["step"]: r["loss"] for r in out.history} == pytest.approx(reference, rel=1e-6)
    data = data_state_of(latest_checkpoint(str(run_dir)))
    assert len(data.consumed) == data.counters.samples + data.counters.num_skipped == out.samples


def test_preflight_reports_every_problem(recipe, tmp_path):
    stage = recipe.stages["stage2"]
    empty = tmp_path / "empty_source"
    empty.mkdir()
    data = stage.data.model_copy(update={"sources": [
        stage.data.sources[0].model_copy(update={"path": str(empty)})]})
    broken = stage.model_copy(update={"data": data})
    with pytest.raises(StageCheckError) as err:
        check_train_stage(broken, inputs={})
    text = str(err.value)
    assert "init.plugins: stage:merge has no input artifact" in text
    assert "data.sources.0" in text and "no *.parquet" in text


def test_per_rank_ingest_gives_each_rank_its_own_dataset_in_order(ray_cluster):
    import ray.data

    from dreamray.orchestration.launcher import _data_config

    config = _data_config()
    datasets = {f"train_{r}": ray.data.range(40, override_num_blocks=8).map(
        lambda row, r=r: {"id": row["id"] * 10 + r}) for r in range(2)}
    per_rank = [config.configure({name: ds}, 2, None, None) for name, ds in datasets.items()]
    for rank, iterators in enumerate(per_rank):
        mine = iterators[rank][f"train_{rank}"]
        assert type(mine).__name__ == "StreamSplitDataIterator"  # executed off the worker
        got = [int(i) for b in mine.iter_batches(batch_size=7) for i in b["id"]]
        assert got == [i * 10 + rank for i in range(40)]
    with pytest.raises(ValueError, match="'train_5' is not train_<rank> for a gang of 2"):
        config.configure({"train_5": datasets["train_0"]}, 2, None, None)
