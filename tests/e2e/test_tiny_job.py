"""The tiny recipe as Ray jobs on a two-node local cluster started by cluster/ scripts.

In order, on one run dir: the full recipe (dashboard: job, Train runs, dreamray_* metrics while
it runs; the stage-I branches overlap, on different nodes; report.md), a re-submission (all
skipped), and an edited stage II whose driver is killed mid-stage (the re-submission skips
stage I and the merge, resumes stage II from its checkpoint, re-runs SFT). That editing one
stage re-runs exactly it and what follows is also covered, faster, in tests/unit and tests/ray.

The cluster: head 3 CPUs + worker 3 CPUs, stages at 2 CPUs per worker, so one node cannot hold
both stage-I gangs and each keeps a CPU for its data pipeline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from local_cluster import (
    REPO,
    LocalCluster,
    build_tiny_assets,
    skipped_stages,
    start_cluster,
    stop_cluster,
)

from dreamray.config import load_recipe, parse_overrides
from dreamray.orchestration.identity import stage_identities
from dreamray.orchestration.ledger import Ledger
from dreamray.orchestration.storage import RunStorage

STAGE_ONE = ("stage1_comprehension", "stage1_creation")
CPUS = "stage_defaults.scaling.cpus_per_worker=2.0"
JOB_TIMEOUT_S = 1500

pytestmark = [
    pytest.mark.skipif(
        not (REPO / "platform" / "dreamray" / "orchestration" / "launcher.py").exists(),
        reason="needs the stage launcher (dreamray.orchestration.launcher)"),
    # Each test waits on up to two jobs of a few minutes each on a shared 2-core machine.
    pytest.mark.timeout(2 * JOB_TIMEOUT_S),
]


@pytest.fixture(scope="module")
def tiny_assets() -> Path:
    """The tiny zoo, shards and eval sets under .cache/tiny, as `make tiny` builds them."""
    return build_tiny_assets()


@pytest.fixture(scope="module")
def cluster(tiny_assets):
    """Head + worker on free ports; stopped by pid at the end."""
    started = start_cluster(head_cpus=3, worker_cpus=3)
    yield started
    stop_cluster(started)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e") / "run"


def _ledger(run_dir: Path) -> Ledger:
    return Ledger(RunStorage(str(run_dir)))


def _watch(cluster: LocalCluster, job: str) -> dict[str, object]:
    """Poll the dashboard until the job ends: what it showed while the job ran."""
    seen: dict[str, object] = {"job_running": False, "train_runs": {}, "metrics": False}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = cluster.job_status(job)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            seen["status"] = status
            return seen
        seen["job_running"] = seen["job_running"] or status == "RUNNING"
        code, body = cluster.api("/api/train/v2/runs/v1")
        if code == 200:
            for run in json.loads(body)["train_runs"]:
                nodes = {w["node_id"] for a in run["attempts"] for w in a["workers"]}
                seen["train_runs"][run["name"]] = nodes or seen["train_runs"].get(run["name"])
        seen["metrics"] = seen["metrics"] or "dreamray_stage_state" in cluster.metrics_text()
        time.sleep(2)
    raise TimeoutError(f"job {job} did not end in {JOB_TIMEOUT_S}s")


def test_full_recipe_job_with_dashboard(cluster, run_dir):
    cluster.submit("dreamray-e2e-full", run_dir, CPUS)
    seen = _watch(cluster, "dreamray-e2e-full")
    assert seen["status"] == "SUCCEEDED", cluster.job_logs("dreamray-e2e-full")[-5000:]
    assert seen["job_running"] and seen["metrics"]
    ledger = _ledger(run_dir)
    records = {n: ledger.read(n) for n in ("stage1_comprehension", "stage1_creation", "merge",
                                          "stage2", "sft", "coco_fid", "textvqa")}
    assert all(r.status == "done" for r in records.values())
    runs = seen["train_runs"]
    keys = {n: r.train_run_name for n, r in records.items() if r.kind == "train"}
    assert set(keys.values()) <= set(runs), (keys, list(runs))
    a, b = (records[n] for n in STAGE_ONE)
    assert min(a.ended_at, b.ended_at) - max(a.started_at, b.started_at) > 0
    node_sets = [runs[keys[n]] for n in STAGE_ONE]
    assert all(node_sets) and not node_sets[0] & node_sets[1], node_sets
    report = (run_dir / "report.md").read_text()
    assert "| sft | train | done |" in report and "overlapped" in report
    assert "| coco_fid | eval | done |" in report and "fid=" in report
    assert (run_dir / "plots" / "coco_fid_grid.png").is_file()


def test_resubmitted_run_skips_every_stage(cluster, run_dir):
    cluster.submit("dreamray-e2e-again", run_dir, CPUS)
    assert cluster.wait_job("dreamray-e2e-again", JOB_TIMEOUT_S) == "SUCCEEDED"
    assert sorted(skipped_stages(cluster.job_logs("dreamray-e2e-again"))) == sorted(
        ["stage1_comprehension", "stage1_creation", "merge", "stage2", "sft", "coco_fid",
         "textvqa"])


def test_killed_driver_resumes_stage2_and_reruns_only_what_changed(cluster, run_dir):
    # Stage II edited (lr) and made long enough to be killed between two checkpoints: stage II
    # and SFT are new identities, stage I and the merge are not.
    edit = ["stages.stage2.optim.lr=9.0e-4", "stages.stage2.data.num_samples=64",
            "stages.stage2.checkpoint.every_n_steps=4"]
    identity = stage_identities(load_recipe(
        REPO / "pipelines/recipes/tiny.yaml", parse_overrides([f"root={REPO}", CPUS, *edit]),
        check_paths=False))["stage2"]
    cluster.submit("dreamray-e2e-kill", run_dir, CPUS, *edit)
    ledger = _ledger(run_dir)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if ledger.latest_checkpoint("stage2", identity):
            break
        assert cluster.job_status("dreamray-e2e-kill") in ("PENDING", "RUNNING")
        time.sleep(1)
    cluster.stop_job("dreamray-e2e-kill")
    assert cluster.wait_job("dreamray-e2e-kill", 300) == "STOPPED"
    killed = ledger.read("stage2")
    assert killed.status == "running"  # the driver died: nothing recorded an end
    cluster.submit("dreamray-e2e-resume", run_dir, CPUS, *edit)
    assert cluster.wait_job("dreamray-e2e-resume", JOB_TIMEOUT_S) == "SUCCEEDED"
    assert sorted(skipped_stages(cluster.job_logs("dreamray-e2e-resume"))) == sorted(
        ["stage1_comprehension", "stage1_creation", "merge"])
    resumed = ledger.read("stage2")
    assert resumed.identity == killed.identity == identity and resumed.status == "done"
    assert [e["event"] for e in resumed.events][-2:] == ["resume", "done"]
    assert resumed.steps == 16 and ledger.read("sft").status == "done"
    # The history of both attempts: had the second started over, step 1 would appear twice.
    history = (run_dir / "metrics" / f"{resumed.train_run_name}.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in history.splitlines()]
    assert steps.count(1) == 1 and steps[-1] == 16, steps
