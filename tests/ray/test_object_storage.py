"""The run dir on S3: moto on 127.0.0.1 with request signing enforced, the tiny recipe driven by
`pipelines/full_recipe.py --run-dir s3://...` processes on the shared local cluster.

In order, on one bucket prefix: a driver killed while stage II is between checkpoints, its
re-submission (skips stage I and the merge, resumes stage II, runs SFT and both evals: every
stage kind, Ray Train storage on S3), a second re-submission that skips every stage, and a scan
of every object of the bucket, every driver log and the cluster's Ray session dir for the
credentials. The credentials live only in the drivers' environment: the cluster's processes
were started without them, so every stage reading or writing S3 proves they were forwarded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamray.orchestration.ledger import Ledger
from dreamray.orchestration.storage import RunStorage

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"
BUCKET = "dreamray-runs"
STAGE_ONE = ["stage1_comprehension", "stage1_creation", "merge"]
ALL_STAGES = STAGE_ONE + ["stage2", "sft", "coco_fid", "textvqa"]
# Stage II long enough (16 steps, a checkpoint every 4) for the driver to die between two.
STAGE2_EDIT = ["stages.stage2.data.num_samples=64", "stages.stage2.checkpoint.every_n_steps=4"]
DRIVER_TIMEOUT_S = 600
# Set at collection, before the session's cluster starts (as tests/ray/test_train_launcher.py):
# Train's controller polls workers this often; the default 2 s adds seconds to every fit.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

pytestmark = [pytest.mark.faults, pytest.mark.timeout(4 * DRIVER_TIMEOUT_S)]


@dataclass(frozen=True)
class Bucket:
    """The S3 server, the run dir URI on it and the only credentials it accepts."""

    endpoint: str
    run_uri: str
    key_id: str
    secret: str


def _grant_keys(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed s3:* and the bucket, made before moto starts checking signatures."""
    import boto3

    kw = {"endpoint_url": endpoint, "region_name": "us-east-1",
          "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="dreamray")
    iam.put_user_policy(UserName="dreamray", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="dreamray")["AccessKey"]  # random per server
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def bucket(ray_cluster):
    """moto on a free port; credentials in this process's environment only (the session
    cluster, requested first, was started without them)."""
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    key_id, secret = _grant_keys(endpoint)
    unchecked = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on a request needs the user's keys
    uri = (f"s3://{BUCKET}/runs/tiny?endpoint_override={host}:{port}&scheme=http"
           "&region=us-east-1")
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", key_id)
            env.setenv("AWS_SECRET_ACCESS_KEY", secret)
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")
            for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
                env.delenv(name, raising=False)
            yield Bucket(endpoint=endpoint, run_uri=uri, key_id=key_id, secret=secret)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = unchecked
        server.stop()


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_zoo) -> list[str]:
    """The tiny data and eval sets under a temp root; the driver's recipe overrides."""
    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals

    root = tmp_path_factory.mktemp("s3tiny")
    build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
    build_tiny_evals(root / ".cache" / "tiny" / "evals")
    return [f"root={root}", f"stage_defaults.model.llm_path={tiny_zoo.llm}",
            f"stage_defaults.model.vision_path={tiny_zoo.vision}",
            f"stage_defaults.model.diffusion_path={tiny_zoo.diffusion}", *STAGE2_EDIT]


@dataclass
class Driver:
    """A `full_recipe.py` process on the session cluster, its output in `log`."""

    proc: subprocess.Popen
    log: Path
    started: float

    def wait(self) -> tuple[int, str, float]:
        """Exit code, output and seconds from start to exit."""
        code = self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        return code, self.log.read_text(), time.monotonic() - self.started


def _start(ray_cluster, bucket: Bucket, overrides: list[str], log: Path) -> Driver:
    cmd = [sys.executable, "pipelines/full_recipe.py", "--recipe", str(TINY),
           "--run-dir", bucket.run_uri,
           "--address", ray_cluster.get_runtime_context().gcs_address, *overrides]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return Driver(proc, log, time.monotonic())


def _skipped(output: str) -> list[str]:
    return sorted(re.findall(r"stage (\S+): skipped", output))


def _kill_between_checkpoints(driver: Driver, ledger: Ledger) -> None:
    """SIGKILL the driver once stage II is running and has a checkpoint on S3."""
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert driver.proc.poll() is None, driver.log.read_text()[-5000:]
        record = ledger.read("stage2")
        if record and record.status == "running" and ledger.latest_checkpoint(
                "stage2", record.identity):
            driver.proc.kill()
            driver.proc.wait(timeout=60)
            return
        time.sleep(0.3)
    raise TimeoutError("stage II never checkpointed")


def test_cluster_processes_lack_the_credentials(ray_cluster, bucket):
    @ray_cluster.remote(num_cpus=0)
    def env_has(name: str) -> bool:
        return name in os.environ

    assert not ray_cluster.get(env_has.remote("AWS_SECRET_ACCESS_KEY"))


def test_killed_driver_resumes_and_resubmission_skips_all_on_s3(ray_cluster, bucket, root,
                                                                tmp_path_factory):
    logs = tmp_path_factory.mktemp("s3logs")
    ledger = Ledger(RunStorage(bucket.run_uri))
    killed = _start(ray_cluster, bucket, root, logs / "killed.log")
    _kill_between_checkpoints(killed, ledger)
    assert ledger.read("stage2").status == "running"  # nothing recorded an end
    code, out, recover_s = _start(ray_cluster, bucket, root, logs / "resume.log").wait()
    print(f"time to recover (re-submission to done) on S3: {recover_s:.1f}s")
    assert code == 0, out[-8000:]
    assert _skipped(out) == sorted(STAGE_ONE)
    records = {n: ledger.read(n) for n in ALL_STAGES}
    assert {n: r.status for n, r in records.items()} == dict.fromkeys(ALL_STAGES, "done")
    stage2 = records["stage2"]
    assert [e["event"] for e in stage2.events][-2:] == ["resume", "done"]
    assert stage2.steps == 16 and stage2.train_storage.startswith(f"s3://{BUCKET}/")
    storage = RunStorage(bucket.run_uri)
    assert storage.list_dir(f"train/{stage2.train_run_name}")  # Ray Train wrote to S3
    report = storage.read_text("report.md")
    assert "| sft | train | done |" in report and "| textvqa | eval | done |" in report
    code, out, _ = _start(ray_cluster, bucket, root, logs / "again.log").wait()
    assert code == 0, out[-8000:]
    assert _skipped(out) == sorted(ALL_STAGES)
    _assert_no_credentials(bucket, [logs, _session_dir(ray_cluster)])


def _session_dir(ray_cluster) -> Path:
    return Path(ray_cluster._private.worker._global_node.get_session_dir_path())


def _assert_no_credentials(bucket: Bucket, local_dirs: list[Path]) -> None:
    """Neither key appears in any object of the bucket or any file under `local_dirs`."""
    secrets = [bucket.secret.encode(), bucket.key_id.encode()]
    storage = RunStorage(f"s3://{BUCKET}?{bucket.run_uri.split('?', 1)[1]}")
    objects = storage.list_files("")
    assert len(objects) > 20, objects
    leaks = [o for o in objects if any(s in storage.read_bytes(o) for s in secrets)]
    files = [p for d in local_dirs for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue  # sockets, files a process removed meanwhile
        leaks += [str(path)] if any(s in data for s in secrets) else []
    assert not leaks, leaks
