"""A two-node local Ray cluster for e2e tests, started and stopped with the cluster/ scripts.

Ports are picked free and non-default, Ray's temp dir and the token live under /tmp/dreamray-e2e-*
so nothing here touches other clusters on the machine (no `ray stop`, no /tmp/ray marker):
stopping signals only the processes of the sessions the scripts started, by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free right now."""
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class LocalCluster:
    """A running head + worker, and how to talk to them."""

    env: dict[str, str]
    dashboard: str
    metrics: list[str]
    token: str
    state: Path

    def api(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """GET a dashboard path with the token; (status, body); status 0 when it timed out."""
        req = urllib.request.Request(self.dashboard + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except (TimeoutError, urllib.error.URLError) as err:
            # a dashboard busy on 2 cores may not answer in time: no answer this round
            return 0, f"no answer: {err}"

    def metrics_text(self) -> str:
        """The Prometheus text of every node's metrics endpoint."""
        texts = []
        for url in self.metrics:
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    texts.append(resp.read().decode())
            except OSError:
                continue
        return "\n".join(texts)

    def submit(self, submission_id: str, run_dir: Path, *overrides: str) -> None:
        """`ray job submit --no-wait` the tiny recipe, as `cluster/submit.sh` does."""
        cmd = [str(VENV / "bin" / "ray"), "job", "submit", "--address", self.dashboard,
               "--no-wait", "--submission-id", submission_id, "--working-dir", ".",
               "--runtime-env", "cluster/runtime_env.yaml", "--", "python",
               "pipelines/full_recipe.py", "--recipe", "pipelines/recipes/tiny.yaml",
               f"root={REPO}", "--run-dir", str(run_dir), *overrides]
        subprocess.run(cmd, cwd=REPO, env=self.env, check=True, capture_output=True,
                       timeout=120)

    def job_status(self, submission_id: str) -> str:
        """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        code, body = self.api(f"/api/jobs/{submission_id}")
        return json.loads(body)["status"] if code == 200 else f"HTTP {code}"

    def job_logs(self, submission_id: str) -> str:
        """The driver's log."""
        code, body = self.api(f"/api/jobs/{submission_id}/logs")
        return json.loads(body)["logs"] if code == 200 else body

    def stop_job(self, submission_id: str) -> None:
        """`ray job stop`: kills the driver."""
        subprocess.run([str(VENV / "bin" / "ray"), "job", "stop", "--address", self.dashboard,
                        submission_id], cwd=REPO, env=self.env, check=True,
                       capture_output=True, timeout=120)

    def wait_job(self, submission_id: str, timeout: float) -> str:
        """Wait until the job ends; its final status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job_status(submission_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        raise TimeoutError(f"job {submission_id} still {status} after {timeout}s")


def build_tiny_assets() -> Path:
    """The tiny zoo, shards and eval sets under .cache/tiny, as `make tiny` builds them."""
    tiny = REPO / ".cache" / "tiny"
    for module, out in (("dreamray.zoo", "zoo"), ("dreamray.data.tiny", "data"),
                        ("dreamray.evals.tiny", "evals")):
        args = [sys.executable, "-m", module] + (["tiny"] if module == "dreamray.zoo" else [])
        subprocess.run(args + ["--out", str(tiny / out)], cwd=REPO, check=True, timeout=900)
    return tiny


def start_cluster(head_cpus: int, worker_cpus: int) -> LocalCluster:
    """Start head + worker with cluster/local_head.sh and cluster/local_worker.sh.

    Raises:
        subprocess.CalledProcessError: if a node does not come up (both are stopped again).
    """
    head, dash, metrics, client, agent, w_agent, w_metrics = free_ports(7)
    state = Path(f"/tmp/dreamray-e2e-{head}")
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DREAMRAY_HEAD_PORT": str(head), "DREAMRAY_DASHBOARD_PORT": str(dash),
           "DREAMRAY_METRICS_PORT": str(metrics), "DREAMRAY_CLIENT_PORT": str(client),
           "DREAMRAY_AGENT_PORT": str(agent), "DREAMRAY_HEAD_CPUS": str(head_cpus),
           "DREAMRAY_HEAD_STATE": str(state / "head"), "DREAMRAY_WORKER_CPUS": str(worker_cpus),
           "DREAMRAY_WORKER_AGENT_PORT": str(w_agent),
           "DREAMRAY_WORKER_METRICS_PORT": str(w_metrics),
           "DREAMRAY_WORKER_STATE": str(state / "worker"),
           "RAY_AUTH_TOKEN_PATH": str(state / "token"), "RAY_AUTH_MODE": "token",
           "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
           # The metrics exporter reports every 10 s by default: too slow for a short job.
           "DREAMRAY_RAY_START_ARGS": "--system-config={\"metrics_report_interval_ms\":2000}"}
    env.pop("RAY_ADDRESS", None)
    cluster = LocalCluster(env=env, dashboard=f"http://127.0.0.1:{dash}",
                           metrics=[f"http://127.0.0.1:{m}/metrics" for m in (metrics, w_metrics)],
                           token="", state=state)
    try:
        for script in ("local_head.sh", "local_worker.sh"):
            subprocess.run(["bash", f"cluster/{script}", "start"], cwd=REPO, env=env,
                           check=True, capture_output=True, timeout=300)
    except BaseException:
        stop_cluster(cluster)
        raise
    cluster.token = (state / "token").read_text().strip()
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    """Stop the worker, then the head (each by its session's pids), and remove their state."""
    for script in ("local_worker.sh", "local_head.sh"):
        subprocess.run(["bash", f"cluster/{script}", "stop"], cwd=REPO, env=cluster.env,
                       capture_output=True, timeout=120)
    shutil.rmtree(cluster.state, ignore_errors=True)


def skipped_stages(log: str) -> list[str]:
    """Stage names the driver log says it skipped."""
    return re.findall(r"stage (\S+): skipped", log)
