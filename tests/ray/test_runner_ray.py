"""The DAG runner on the shared local Ray cluster (4 CPUs): stages as Ray tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import stage_toys
from ray import cloudpickle
from stage_toys import ToyTrainer

from dreamray.config import load_recipe
from dreamray.orchestration.merge import run_merge_stage
from dreamray.orchestration.ray_backend import RayBackend
from dreamray.orchestration.runner import DagRunner, RunFailed

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"
STAGE_ONE = ["stage1_comprehension", "stage1_creation"]

# Ray workers cannot import the tests directory: ship the toy trainer's module by value.
cloudpickle.register_pickle_by_value(stage_toys)


def _run(ray_cluster, run_dir, trainer, targets=None, **overrides):
    recipe = load_recipe(TINY, {"root": "/x", **overrides}, check_paths=False)
    executors = {"train": trainer, "merge": run_merge_stage}
    # the eval stages need a real model (the unit tier runs them on the toy one with a fake)
    targets = targets or [n for n, s in recipe.stages.items() if s.kind != "eval"]
    return DagRunner(recipe, str(run_dir), RayBackend(recipe.name), executors,
                     targets=targets, poll_s=0.2).run()


def _overlap(summary) -> float:
    a, b = (summary.records[n] for n in STAGE_ONE)
    return min(a.ended_at, b.ended_at) - max(a.started_at, b.started_at)


def test_branches_overlap_and_a_failed_stage_resumes(ray_cluster, tmp_path):
    toy = ToyTrainer(step_s=0.5, fail_once_at={"stage2": 2}, marker_dir=str(tmp_path / "m"))
    with pytest.raises(RunFailed, match="toy failure of stage2"):
        _run(ray_cluster, tmp_path / "run", toy)
    summary = _run(ray_cluster, tmp_path / "run", toy)
    assert summary.states["stage1_comprehension"] == "skipped"
    assert summary.states["stage2"] == summary.states["sft"] == "done"
    assert summary.records["stage2"].metrics["resumed_from_step"] == 2
    first = load_first_run_overlap(tmp_path / "run")
    # Sequential runs cannot overlap at all; worker start-up on a loaded machine can delay
    # one branch, so any overlap counts.
    assert first > 0, "the two stage-I branches did not run at the same time"
    assert summary.records["merge"].node_id  # ran as a Ray task on a node


def load_first_run_overlap(run_dir: Path) -> float:
    from dreamray.orchestration.ledger import Ledger
    from dreamray.orchestration.storage import RunStorage

    ledger = Ledger(RunStorage(str(run_dir)))
    a, b = (ledger.read(n) for n in STAGE_ONE)
    return min(a.ended_at, b.ended_at) - max(a.started_at, b.started_at)


def test_gangs_that_do_not_fit_together_run_one_after_the_other(ray_cluster, tmp_path):
    # 3 + 3 CPUs on a 4-CPU cluster: the runner must not start the second gang.
    summary = _run(ray_cluster, tmp_path / "run", ToyTrainer(step_s=0.2), targets=STAGE_ONE,
                   **{"stage_defaults.scaling.cpus_per_worker": 3.0})
    assert _overlap(summary) <= 0
