"""A swept train stage on the shared local Ray cluster (4 CPUs): tiny_sweep.yaml's 4-trial sweep
of stage1_creation through the runner and its executors, then the merge that consumes its
artifact, and re-submissions that must not train again.

One trial = 1 worker + 1 data map actor = 2 CPUs, so 2 trials run at once. The sweep runs
once per module; the tests read what it left.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamray.config.load import load_recipe
from dreamray.config.sweep_specs import trial_stage
from dreamray.contracts import DREAM_PLUGIN, PLUGIN_FILES, STAGE_FILE
from dreamray.files import sha256_file
from dreamray.orchestration.context import StageContext
from dreamray.orchestration.executors import default_executors, run_train
from dreamray.orchestration.identity import spec_hash, stage_identities, stage_key
from dreamray.orchestration.ledger import Ledger, artifact_rel
from dreamray.orchestration.merge import run_merge_stage
from dreamray.orchestration.ray_backend import RayBackend
from dreamray.orchestration.runner import DagRunner, RunPreempted
from dreamray.orchestration.storage import RunStorage
from dreamray.orchestration.sweep_trials import final_metrics
from dreamray.orchestration.train_data import latest_checkpoint
from dreamray.train.run import ARTIFACT_SUBDIR

REPO = Path(__file__).resolve().parents[2]
NAME = "stage1_creation"
STOP_WAIT_S = 900
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as test_train_launcher
# `make test-slow`: several minutes of Ray Train gangs on 2 cores, beyond `make test`'s budget.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tiny_zoo, tmp_path_factory):
    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals

    root = tmp_path_factory.mktemp("tiny_sweep")
    build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
    build_tiny_evals(root / ".cache" / "tiny" / "evals")
    overrides = {
        "root": str(root),
        "stage_defaults.model.llm_path": str(tiny_zoo.llm),
        "stage_defaults.model.vision_path": str(tiny_zoo.vision),
        "stage_defaults.model.diffusion_path": str(tiny_zoo.diffusion),
    }
    return load_recipe(REPO / "pipelines" / "recipes" / "tiny_sweep.yaml", overrides=overrides)


def _run(recipe, run_dir):
    return DagRunner(recipe, str(run_dir), RayBackend(recipe.name), default_executors(),
                     targets=[NAME], poll_s=0.2).run()


def _checkpoint_dirs(train_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(train_dir)): p.stat().st_mtime
            for p in train_dir.rglob("checkpoint_*") if p.is_dir()}


def _final_trials(train_dir: Path) -> dict[str, dict[str, float]]:
    """Trial run name -> its checkpoint dirs (with mtimes), for the trials that finished."""
    finals = {}
    for run in train_dir.glob(f"{train_dir.name}_*"):
        try:
            final = final_metrics(latest_checkpoint(str(run)))
        except Exception:  # noqa: BLE001 - a run being written: not final yet
            final = None
        if final is not None:
            finals[run.name] = _checkpoint_dirs(run)
    return finals


@dataclass
class Stopped:
    """What the first submission left when it was stopped mid-sweep."""

    error: BaseException | None
    finished: dict[str, dict[str, float]]  # finished trials' checkpoints when it stopped
    record_error: str


def _stop_mid_sweep(recipe, run_dir: Path) -> Stopped:
    """Submit, and ask the run to stop (as SIGTERM does) once a trial has finished."""
    runner = DagRunner(recipe, str(run_dir), RayBackend(recipe.name), default_executors(),
                       targets=[NAME], poll_s=0.2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - asserted by the tests
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    train_dir = run_dir / "train" / stage_key(NAME, _id(recipe))
    deadline = time.time() + STOP_WAIT_S
    while not _final_trials(train_dir) and thread.is_alive() and time.time() < deadline:
        time.sleep(0.5)
    runner.request_stop("test: stop mid-sweep")
    thread.join(STOP_WAIT_S)
    assert not thread.is_alive(), "the stopped sweep did not return"
    record = Ledger(RunStorage(str(run_dir))).read(NAME)
    return Stopped(errors[0] if errors else None, _final_trials(train_dir),
                   record.error or "" if record else "")


@pytest.fixture(scope="module")
def swept(ray_cluster, recipe, tmp_path_factory):
    """The sweep stopped once a trial has finished, then re-submitted to completion."""
    run_dir = tmp_path_factory.mktemp("sweep_run")
    stopped = _stop_mid_sweep(recipe, run_dir)
    started = time.time()
    summary = _run(recipe, run_dir)
    resumed_s = time.time() - started
    manifest = _manifest(recipe, run_dir)
    return run_dir, summary, manifest, resumed_s, stopped


def _manifest(recipe, run_dir):
    ids = stage_identities(recipe)
    return json.loads((Path(run_dir) / artifact_rel(NAME, ids[NAME]) / STAGE_FILE).read_text())


def test_every_trial_is_recorded_and_the_winner_is_the_artifact(recipe, swept):
    run_dir, summary, manifest, *_ = swept
    stage = recipe.stages[NAME]
    assert summary.states[NAME] == "done"
    sweep = manifest["sweep"]
    trials = sweep["trials"]
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4
    winners = [t for t in trials if t["winner"]]
    assert len(winners) == 1 and winners[0]["trial_id"] == sweep["winner"]
    (winner,) = winners
    assert {t["status"] for t in trials} <= {"completed", "stopped"}
    for t in trials:
        assert set(t["values"]) == set(stage.sweep.space)
        assert t["history"] and t["metric"] == t["history"][-1][1]
        full = t["status"] == "completed"
        assert (t["steps"] == stage.total_steps) == full, t
    done = [t for t in trials if t["status"] == "completed"]
    assert winner["metric"] == min(t["metric"] for t in done)
    # The published artifact is the winner's run, trained with the winner's values.
    trained = trial_stage(stage, winner["values"])
    assert manifest["spec_hash"] == spec_hash(trained)
    assert manifest["run_name"] == winner["run_name"]
    assert manifest["sweep"]["sweep_spec_hash"] == spec_hash(stage)
    final = Path(latest_checkpoint(str(run_dir / "train" / stage_key(NAME, _id(recipe)) /
                                       winner["run_name"])).path)
    plugin = PLUGIN_FILES[DREAM_PLUGIN]
    artifact = run_dir / artifact_rel(NAME, _id(recipe))
    assert sha256_file(artifact / plugin) == sha256_file(final / ARTIFACT_SUBDIR / plugin)
    assert manifest["files"][plugin] == sha256_file(artifact / plugin)


def _id(recipe):
    return stage_identities(recipe)[NAME]


def test_the_ledger_and_the_report_show_the_trials(recipe, swept):
    run_dir, summary, manifest, *_ = swept
    record = Ledger(RunStorage(str(run_dir))).read(NAME)
    lines = [e["detail"] for e in record.events if e["event"] == "trial"]
    assert len(lines) == 4
    (won,) = [e["detail"] for e in record.events if e["event"] == "sweep_winner"]
    assert won.startswith(manifest["sweep"]["winner"])
    report = (run_dir / "report.md").read_text()
    assert f"## Sweep: {NAME}" in report and report.count("**winner**") == 1
    assert (run_dir / "plots" / f"{NAME}_sweep.png").stat().st_size > 0


def test_a_resubmitted_sweep_is_skipped_and_a_restore_trains_nothing(recipe, swept):
    run_dir, _, manifest, first_s, _ = swept
    train_dir = run_dir / "train" / stage_key(NAME, _id(recipe))
    before = _checkpoint_dirs(train_dir)
    assert len(before) >= 4  # every trial checkpointed at least once
    assert _run(recipe, run_dir).states[NAME] == "skipped"
    # The executor again, as after a driver killed between the sweep's end and its record:
    # Tune restores the finished experiment and no trial trains.
    ids = stage_identities(recipe)
    ctx = StageContext(name=NAME, identity=ids[NAME], spec_hash=spec_hash(recipe.stages[NAME]),
                       artifact_dir=str(run_dir / "again"), train_storage=str(run_dir / "train"),
                       train_run_name=stage_key(NAME, ids[NAME]))
    started = time.time()
    outcome = run_train(recipe.stages[NAME], ctx)
    again_s = time.time() - started
    assert _checkpoint_dirs(train_dir) == before
    again = json.loads((run_dir / "again" / STAGE_FILE).read_text())
    assert again["sweep"]["trials"] == manifest["sweep"]["trials"]
    assert again["files"] == manifest["files"] and outcome.steps == manifest["steps"]
    assert again_s < first_s


def test_the_merge_consumes_the_sweep_artifact(recipe, swept, tmp_path):
    run_dir, _, manifest, *_ = swept
    artifact = run_dir / artifact_rel(NAME, _id(recipe))
    # The comprehension branch is not what is under test: its plugin files come from the
    # creation artifact too, which the merge accepts (same tokenizer, same widths).
    inputs = {"stage1_comprehension": str(artifact), NAME: str(artifact)}
    ctx = StageContext(name="merge", identity="test", spec_hash="test",
                       artifact_dir=str(tmp_path / "merge"), train_storage=str(tmp_path),
                       train_run_name="merge", inputs=inputs)
    merged = Path(run_merge_stage(recipe.stages["merge"], ctx).artifact_dir)
    plugin = PLUGIN_FILES[DREAM_PLUGIN]
    assert sha256_file(merged / plugin) == manifest["files"][plugin]


def test_a_stopped_sweep_resumes_without_rerunning_finished_trials(recipe, swept):
    run_dir, summary, manifest, _, stopped = swept
    assert isinstance(stopped.error, RunPreempted), stopped.error
    assert "preempted: the sweep stopped on request" in stopped.record_error
    assert stopped.finished, "no trial had finished when the sweep was stopped"
    train_dir = run_dir / "train" / stage_key(NAME, _id(recipe))
    # Tune's restore re-ran none of them: not one checkpoint of theirs was written again.
    after = _final_trials(train_dir)
    for run_name, checkpoints in stopped.finished.items():
        assert after[run_name] == checkpoints, run_name
    assert summary.states[NAME] == "done" and len(after) >= len(stopped.finished)
    completed = {t["run_name"] for t in manifest["sweep"]["trials"] if t["status"] == "completed"}
    assert set(stopped.finished) <= completed
