"""A node lost mid-stage (issue 20's fault matrix, `make test-faults`): on the two-node local
cluster, the worker node that runs a stage's only training worker is killed (every process of
its session, SIGKILL, by pid); the stage resumes from its last checkpoint on the head and
finishes, with every stream position consumed exactly once (`node_loss_job.py` holds the head's
CPUs until the node is gone, so the first gang can only start on the worker node)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from local_cluster import REPO, VENV, build_tiny_assets, start_cluster, stop_cluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1800)]
HEAD_CPUS = WORKER_CPUS = 2  # one node holds the 1-CPU worker and its 1-CPU data actor
STEPS, EVERY = 12, 2
OVERRIDES = [f"root={REPO}", "stage_defaults.checkpoint.max_failures=3",
             f"stage_defaults.checkpoint.every_n_steps={EVERY}",
             f"stages.stage1_comprehension.data.num_samples={STEPS * 4}"]


@pytest.fixture(scope="module")
def cluster():
    build_tiny_assets()
    started = start_cluster(head_cpus=HEAD_CPUS, worker_cpus=WORKER_CPUS)
    yield started
    stop_cluster(started)


def _submit(cluster, storage: Path) -> str:
    job = f"node-loss-{int(time.time())}"
    subprocess.run(
        [str(VENV / "bin" / "ray"), "job", "submit", "--address", cluster.dashboard, "--no-wait",
         "--submission-id", job, "--working-dir", ".", "--runtime-env",
         "cluster/runtime_env.yaml", "--", "python", "tests/e2e/node_loss_job.py",
         "--storage", str(storage), "--head-cpus", str(HEAD_CPUS), *OVERRIDES],
        cwd=REPO, env=cluster.env, check=True, capture_output=True, timeout=120)
    return job


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _cmdlines(pids: list[int]) -> str:
    texts = []
    for pid in pids:
        try:
            texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return "\n".join(texts)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout}s")
        time.sleep(0.5)


def _steps_done(storage: Path) -> int:
    history = storage / "node-loss" / "metrics.jsonl"
    lines = history.read_text().splitlines() if history.is_file() else []
    return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


def test_a_lost_worker_node_costs_no_sample(cluster, tmp_path):
    storage = tmp_path / "runs"
    job = _submit(cluster, storage)
    sid = int((cluster.state / "worker" / "node.pid").read_text())
    def stepped() -> bool:
        status = cluster.job_status(job)
        assert status in ("PENDING", "RUNNING"), cluster.job_logs(job)[-3000:]
        return _steps_done(storage) >= EVERY + 1

    _wait_for(stepped, 900, "a checkpointed step")
    assert "RayTrainWorker" in _cmdlines(_session_pids(sid))  # the gang is on the worker node
    killed_at, steps_at_kill = time.time(), _steps_done(storage)
    for pid in _session_pids(sid):  # the node's raylet, its workers, its agents: all at once
        os.kill(pid, signal.SIGKILL)
    assert cluster.wait_job(job, 1500) == "SUCCEEDED", cluster.job_logs(job)[-3000:]
    outcome = json.loads((storage / "outcome.json").read_text())
    assert outcome["steps"] == STEPS and outcome["samples"] == STEPS * 4
    # every position the stream handed out was trained on (or counted as skipped) exactly once
    assert outcome["consumed"] == outcome["counted"] and outcome["trained"] == STEPS * 4
    resumed = [r for r in outcome["history"] if r["ended_at"] > killed_at]
    # re-done from a checkpoint at most one step newer than what had been seen
    first = resumed[0]["step"]
    assert (first - 1) % EVERY == 0 and first <= steps_at_kill + 2, (first, steps_at_kill)
    recovery = resumed[0]["ended_at"] - killed_at
    print(f"\nnode loss: killed at step {steps_at_kill}, resumed at step {first}, first step "
          f"after the loss {recovery:.1f}s later (node seen dead after "
          f"{outcome['node_dead_seen_at'] - killed_at:.1f}s)")
