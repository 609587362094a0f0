"""The DAG runner on the in-process thread backend, with the toy trainer and the real merge."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image
from stage_toys import ToyTrainer

import dreamray.evals.stage as eval_stage
from dreamray.config import load_recipe
from dreamray.orchestration.backends import ThreadBackend
from dreamray.orchestration.executors import run_eval
from dreamray.orchestration.ledger import Ledger
from dreamray.orchestration.merge import run_merge_stage
from dreamray.orchestration.runner import DagRunner, PreflightError, RunFailed, RunPreempted
from dreamray.orchestration.storage import RunStorage

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"
STAGE_ONE = ("stage1_comprehension", "stage1_creation")
EVALS = ("coco_fid", "textvqa")
SEEN: dict[str, str] = {}


def fake_eval(spec, model_dir, out_dir):
    """Stands in for generation and scoring, which need a real model: three images, a score."""
    SEEN["model_dir"] = model_dir
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(buf, format="PNG")
        (Path(out_dir) / f"sample{i}.png").write_bytes(buf.getvalue())
    Image.new("RGB", (20, 30), "blue").save(Path(out_dir) / "grid.png")  # the eval's own grid
    return {"accuracy": 0.5, "protocol": "official"}


@pytest.fixture(autouse=True)
def _fake_evals(monkeypatch):
    monkeypatch.setattr(eval_stage, "run_eval_stage", fake_eval)


def _run(run_dir, nodes=({"CPU": 4.0},), trainer=None, targets=None, **overrides):
    recipe = load_recipe(TINY, {"root": "/x", **overrides}, check_paths=False)
    executors = {"train": trainer or ToyTrainer(step_s=0.1), "merge": run_merge_stage,
                 "eval": run_eval}
    backend = ThreadBackend(list(nodes))
    try:
        return DagRunner(recipe, str(run_dir), backend, executors, targets=targets,
                         poll_s=0.05).run()
    finally:
        backend.close()


def _overlap(summary) -> float:
    a, b = (summary.records[n] for n in STAGE_ONE)
    return min(a.ended_at, b.ended_at) - max(a.started_at, b.started_at)


def test_full_run_then_skip_then_edit(tmp_path):
    run = f"file://{tmp_path}/run"
    first = _run(run)
    assert set(first.states.values()) == {"done"}
    assert _overlap(first) > 0.2  # the stage-I branches ran at the same time
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| stage2 | train | done | 4 | 16 |" in report
    assert "overlapped" in report and (tmp_path / "run" / "plots" / "losses.png").is_file()

    again = _run(run)
    assert set(again.states.values()) == {"skipped"}

    edited = _run(run, **{"stages.sft.optim.lr": 5.0e-4})
    assert edited.states == {**{n: "skipped" for n in edited.states}, "sft": "done",
                             **{n: "done" for n in EVALS}}
    # the evals re-ran on the new SFT artifact (the run dir is a file:// URI here)
    assert Path(SEEN["model_dir"]).name == Path(edited.artifact("sft")).name


def test_small_cluster_runs_the_branches_one_after_the_other(tmp_path):
    # Two 1-CPU gangs would fit 2 CPUs, but then no CPU is left for either stage's Ray Data
    # actors (a real run hung like that): each stage holds a CPU for its data besides its gang.
    summary = _run(tmp_path / "run", nodes=[{"CPU": 2.0}], targets=list(STAGE_ONE))
    assert _overlap(summary) <= 0


def test_a_stage_with_no_cpu_left_for_its_data_can_never_run(tmp_path):
    with pytest.raises(PreflightError) as err:
        _run(tmp_path / "run", nodes=[{"CPU": 1.0}], targets=list(STAGE_ONE))
    assert ("stages.stage1_creation: can never be scheduled: asks for 1 x {CPU: 1} = {CPU: 1} "
            "plus {CPU: 1} for its 1 data map actor(s); the cluster has {CPU: 1}") in str(err.value)


def test_a_gang_that_can_never_fit_fails_before_anything_runs(tmp_path):
    with pytest.raises(PreflightError) as err:
        _run(tmp_path / "run", nodes=[{"CPU": 2.0}], **{"stages.stage2.scaling.num_workers": 4,
                                   "stages.stage2.deepspeed.micro_batch_per_gpu": 1})
    assert "stages.stage2: can never be scheduled: asks for 4 x {CPU: 1} = {CPU: 4}" in \
        str(err.value)
    assert "the cluster has {CPU: 2}" in str(err.value)
    assert not (tmp_path / "run" / "ledger").exists()


def test_failed_stage_resumes_from_its_checkpoint(tmp_path):
    toy = ToyTrainer(step_s=0.05, fail_once_at={"stage2": 2}, marker_dir=str(tmp_path / "m"))
    with pytest.raises(RunFailed, match="stage2: RuntimeError: toy failure"):
        _run(tmp_path / "run", trainer=toy)
    ledger = Ledger(RunStorage(str(tmp_path / "run")))
    assert ledger.read("stage2").status == "failed"
    assert ledger.read("sft") is None  # blocked, never started
    resumed = _run(tmp_path / "run", trainer=toy)
    assert resumed.states["stage2"] == "done" and resumed.states["sft"] == "done"
    assert resumed.records["stage2"].metrics["resumed_from_step"] == 2
    assert [e["event"] for e in resumed.records["stage2"].events] == ["run", "failed",
                                                                     "resume", "done"]


def test_corrupted_artifact_is_rerun_and_downstream_kept(tmp_path):
    _run(tmp_path / "run")
    ledger = Ledger(RunStorage(str(tmp_path / "run")))
    artifact = Path(ledger.read("stage1_creation").artifact)
    (artifact / "dream_embedding.bin").write_bytes(b"garbage")
    summary = _run(tmp_path / "run")
    assert summary.states["stage1_creation"] == "done"
    events = [e["event"] for e in summary.records["stage1_creation"].events]
    assert events[-3:] == ["corrupt", "run", "done"]
    # The re-made artifact is byte-identical (seeded trainer), so nothing downstream re-runs.
    assert summary.states["merge"] == summary.states["stage2"] == "skipped"


def test_one_stage_reads_its_inputs_from_the_run_dir(tmp_path):
    with pytest.raises(PreflightError, match="'stage2' has no finished artifact"):
        _run(tmp_path / "run", targets=["sft"])
    _run(tmp_path / "run")
    summary = _run(tmp_path / "run", targets=["sft"], **{"stages.sft.optim.lr": 7.0e-4})
    assert summary.states == {"stage1_comprehension": "external", "stage1_creation": "external",
                              "merge": "external", "stage2": "external", "sft": "done",
                              **{n: "external" for n in EVALS}}  # not targeted: left alone
    with pytest.raises(PreflightError, match="unknown stage 'nope'"):
        _run(tmp_path / "run", targets=["nope"])


def test_eval_stages_run_on_their_model_and_their_images_reach_the_report(tmp_path):
    summary = _run(tmp_path / "run")
    assert all(summary.states[n] == "done" for n in EVALS)
    assert SEEN["model_dir"] == summary.artifact("sft")
    assert summary.records["coco_fid"].metrics == {"accuracy": 0.5}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| coco_fid | eval | done |" in report and "accuracy=0.5" in report
    for name in EVALS:  # the eval's own grid is used as it is, not tiled with its images
        grid = Image.open(tmp_path / "run" / "plots" / f"{name}_grid.png")
        assert grid.size == (20, 30)


TASK_RESULTS = {
    "coco_fid": {"fid": 12.5},
    "attribute_match": {"color_accuracy": 0.75, "color_chance": 0.17, "shape_accuracy": 0.5,
                        "shape_chance": 0.33, "position_accuracy": 0.6, "position_chance": 0.2,
                        "unreadable": {"no shape": 2}},
    "vqa": {"overall": 61.0, "per_answer_type": {"color": 80.0, "shape": 70.0}},
}


def test_toy_recipe_reports_a_learning_table_row_per_evaluated_model(tmp_path, monkeypatch):
    import dreamray.orchestration.executors as executors

    subjects = {}

    def task_eval(spec, model_dir, out_dir):
        subjects.setdefault(spec.eval.model, set()).add(model_dir)
        scale = {"base": 0.0, "stage:stage2": 0.5}.get(spec.eval.model, 1.0)
        result = json.loads(json.dumps(TASK_RESULTS[spec.eval.task]))
        if "color_accuracy" in result:
            result["color_accuracy"] *= scale
        Path(out_dir, "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(eval_stage, "run_eval_stage", task_eval)
    monkeypatch.setattr(executors, "base_model_artifact", lambda stage, out: out)
    recipe = load_recipe(REPO / "pipelines/recipes/toy.yaml", {"root": "/x"}, check_paths=False)
    backend = ThreadBackend([{"CPU": 4.0}])
    try:
        executors_ = {"train": ToyTrainer(step_s=0.0), "merge": run_merge_stage, "eval": run_eval}
        summary = DagRunner(recipe, str(tmp_path / "run"), backend, executors_, poll_s=0.05).run()
    finally:
        backend.close()
    assert all(state == "done" for state in summary.states.values())
    assert subjects["stage:sft"] == {summary.artifact("sft")}
    assert subjects["stage:stage2"] == {summary.artifact("stage2")}
    assert {Path(d).name for d in subjects["base"]} == {"base_model"}  # one per base eval
    report = (tmp_path / "run" / "report.md").read_text()
    table = report.split("## Learning")[1].split("\n\n")[2].splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| base", "| stage:stage2",
                                                           "| stage:sft"]
    assert "| stage:sft | 12.50 | 0.75 (0.17) | 0.50 (0.33) | 0.60 (0.20) | 61.0 | 80.0 | " \
           "70.0 |  |  | no shape: 2 |" in report
    assert "| base | 12.50 | 0.00 (0.17) |" in report


def test_loss_trend_table_says_which_losses_fell():
    from dreamray.orchestration.learning import loss_trend_table

    falling = [(i, 20.0 - i) for i in range(20)]  # first 10%: 19.5, last 10%: 1.5
    rising = [(i, float(i)) for i in reversed(range(20))]  # out of order: sorted by step
    lines = loss_trend_table({"stage1": {"vm_loss": falling, "lr": rising},
                              "sft": {"lm_loss": rising, "loss": [(1, 2.0)]}})
    assert "| stage1 | vm_loss | 20 | 19.5 | 1.5 | yes |" in lines
    assert "| sft | lm_loss | 20 | 0.5 | 18.5 | **no** |" in lines
    assert not any("| lr |" in line or "| loss | 1 |" in line for line in lines)
    assert loss_trend_table({"stage1": {"lr": rising}}) == []


def test_a_publish_that_runs_out_of_space_leaves_no_artifact_and_no_done(tmp_path, monkeypatch):
    import errno

    from dreamray.orchestration import merge

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    copy2 = merge.shutil.copy2
    monkeypatch.setattr(merge.shutil, "copy2", no_space)
    with pytest.raises(RunFailed, match=r"merge: OSError: \[Errno 28\] No space left on device"):
        _run(tmp_path / "run")
    ledger = Ledger(RunStorage(str(tmp_path / "run")))
    record = ledger.read("merge")
    assert record.status == "failed" and "nothing was published" in record.error
    artifacts = [p.name for p in (tmp_path / "run" / "artifacts").iterdir()]
    assert not [a for a in artifacts if a.startswith("merge") or a.startswith(".")], artifacts
    monkeypatch.setattr(merge.shutil, "copy2", copy2)
    summary = _run(tmp_path / "run")  # space again: the merge and what follows it run
    assert summary.states["merge"] == "done" and summary.states["stage1_creation"] == "skipped"


def test_a_second_driver_on_a_live_run_dir_starts_nothing(tmp_path):
    import os
    import socket
    import time

    from dreamray.orchestration.lease import LEASE_FILE, LeaseHeldError

    storage = RunStorage(str(tmp_path / "run"))
    other = {"owner": "bob", "host": socket.gethostname(), "pid": os.getppid(),
             "token": "other", "acquired_at": time.time(), "heartbeat_at": time.time()}
    storage.write_json(LEASE_FILE, other)
    with pytest.raises(LeaseHeldError, match=f"bob@{socket.gethostname()} pid {os.getppid()}"):
        _run(tmp_path / "run")
    assert not storage.exists("artifacts") and storage.read_json(LEASE_FILE) == other
    storage.delete_file(LEASE_FILE)  # that driver ended
    assert _run(tmp_path / "run").states["sft"] == "done"
    assert not storage.exists(LEASE_FILE)  # released at the end


def test_events_and_skips_a_stage_reports_reach_its_record_and_the_report(tmp_path):
    toy = ToyTrainer(step_s=0.01)

    def trainer_that_fell_back(stage, ctx):
        outcome = toy(stage, ctx)
        if ctx.name == "stage2":
            outcome.events = [("checkpoint_fallback", "checkpoint_b: meta.json missing")]
            outcome.skipped = {"image_transform_failed": 2, "too_long": 1}
        return outcome

    summary = _run(tmp_path / "run", trainer=trainer_that_fell_back)
    ledger = Ledger(RunStorage(str(tmp_path / "run")))
    events = [(e["event"], e["detail"]) for e in ledger.read("stage2").events]
    assert ("checkpoint_fallback", "checkpoint_b: meta.json missing") in events
    assert events[-1][0] == "done" and summary.states["stage2"] == "done"
    assert all(e["event"] != "checkpoint_fallback" for e in ledger.read("sft").events)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "- stage2 skipped 3 samples: image_transform_failed=2, too_long=1" in report
    assert "- sft skipped" not in report


def test_a_stop_request_checkpoints_the_running_stages_and_the_rerun_continues(tmp_path):
    recipe = load_recipe(TINY, {"root": "/x"}, check_paths=False)
    executors = {"train": ToyTrainer(step_s=0.2), "merge": run_merge_stage, "eval": run_eval}
    backend = ThreadBackend([{"CPU": 4.0}])
    runner = DagRunner(recipe, str(tmp_path / "run"), backend, executors, poll_s=0.05)
    asker = threading.Timer(0.5, runner.request_stop, args=("SIGTERM to the driver",))
    asker.start()  # during stage I: both branches are running
    try:
        with pytest.raises(RunPreempted, match=r"SIGTERM to the driver.*re-submit"):
            runner.run()
    finally:
        asker.cancel()
        backend.close()
    ledger = Ledger(RunStorage(str(tmp_path / "run")))
    for name in STAGE_ONE:
        record = ledger.read(name)
        assert record.status == "failed" and "preempted: stopped on request" in record.error
    assert ledger.read("merge") is None and ledger.read("stage2") is None  # never started
    resumed = _run(tmp_path / "run")
    assert set(resumed.states.values()) == {"done"}
    for name in STAGE_ONE:
        assert 0 < resumed.records[name].metrics["resumed_from_step"] < 4


def test_stages_still_running_when_the_grace_period_ends_are_recorded_as_stopped(tmp_path):
    recipe = load_recipe(TINY, {"root": "/x", "stage_defaults.checkpoint.preemption_grace_s": 0.2},
                         check_paths=False)
    executors = {"train": ToyTrainer(step_s=1.0), "merge": run_merge_stage, "eval": run_eval}
    backend = ThreadBackend([{"CPU": 4.0}])
    runner = DagRunner(recipe, str(tmp_path / "run"), backend, executors, poll_s=0.05)
    runner.request_stop("SIGTERM to the driver")  # before anything starts: nothing does
    with pytest.raises(RunPreempted):
        runner.run()
    assert runner.dag.unfinished() == list(recipe.topological_order())
    runner = DagRunner(recipe, str(tmp_path / "run2"), backend, executors, poll_s=0.05)
    threading.Timer(0.3, runner.request_stop, args=("SIGTERM to the driver",)).start()
    try:
        with pytest.raises(RunPreempted):
            runner.run()  # steps of 1 s: no stage reaches a step boundary within 0.2 s
    finally:
        backend.close()
    record = Ledger(RunStorage(str(tmp_path / "run2"))).read("stage1_creation")
    assert record.status == "failed"
    assert "still running when the grace period (0.2 s) ended" in record.error


def test_an_eval_whose_manifest_write_runs_out_of_space_is_not_done(tmp_path, monkeypatch):
    import errno

    import dreamray.files as files

    replace = files.os.replace

    def no_space_for_stage_json(src, dst):
        if str(dst).endswith("stage.json") and "coco_fid" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", no_space_for_stage_json)
    with pytest.raises(RunFailed, match=r"coco_fid: OSError: \[Errno 28\] No space left"):
        _run(tmp_path / "run")
    record = Ledger(RunStorage(str(tmp_path / "run"))).read("coco_fid")
    assert record.status == "failed" and "stage.json" in record.error
    (artifact,) = (tmp_path / "run" / "artifacts").glob("coco_fid-*")
    assert not (artifact / "stage.json").exists()
    assert not [p for p in artifact.iterdir() if p.name.startswith(".")]  # no temp file left
    monkeypatch.setattr(files.os, "replace", replace)
    summary = _run(tmp_path / "run")
    assert summary.states["coco_fid"] == "done" and summary.states["stage2"] == "skipped"
