"""The Ray backend: each stage is a Ray task (0 CPUs) that launches its trainer or merge.

The task takes no resources itself: the gang it launches (Ray Train's placement group) does,
and the runner has already checked the gang fits before submitting. Stage states are exported
as `dreamray_*` Ray metrics from a small actor that lives as long as the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.util.metrics import Gauge

from dreamray.config.specs import AnyStageSpec
from dreamray.orchestration.backends import ClusterSnapshot
from dreamray.orchestration.context import Executor, StageError, StageOutcome, error_line
from dreamray.orchestration.executors import StageTask, execute_stage

STATE_CODES = {"pending": 0, "running": 1, "done": 2, "skipped": 3, "failed": 4, "blocked": 5}


@ray.remote(num_cpus=0, max_retries=0)
def stage_task(executor: Executor, stage: AnyStageSpec, task: StageTask) -> StageOutcome:
    """The Ray task of one stage (see `execute_stage`)."""
    return execute_stage(executor, stage, task)


@ray.remote(num_cpus=0)
class RunMetrics:
    """Holds the run's `dreamray_*` gauges so they are exported while the driver runs."""

    def __init__(self, run: str):
        """Create the gauges.

        Args:
            run: the run's name, a tag on every gauge.
        """
        keys = ("run", "stage")
        self.run = run
        self.state = Gauge("dreamray_stage_state", "stage state: " + ", ".join(
            f"{k}={v}" for k, v in STATE_CODES.items()), tag_keys=keys)
        self.steps = Gauge("dreamray_stage_steps", "optimizer steps of a finished stage",
                           tag_keys=keys)
        self.seconds = Gauge("dreamray_stage_seconds", "wall seconds of a finished stage",
                             tag_keys=keys)

    def publish(self, stage: str, state: str, info: Mapping[str, Any]) -> None:
        """Set a stage's gauges."""
        tags = {"run": self.run, "stage": stage}
        self.state.set(STATE_CODES.get(state, -1), tags=tags)
        if info.get("steps") is not None:
            self.steps.set(float(info["steps"]), tags=tags)
        if info.get("seconds") is not None:
            self.seconds.set(float(info["seconds"]), tags=tags)


class RayBackend:
    """Stages as Ray tasks on the connected Ray cluster."""

    def __init__(self, run_name: str):
        """Start the metrics actor.

        Args:
            run_name: tag of the exported metrics.

        Raises:
            RuntimeError: if Ray is not initialized.
        """
        if not ray.is_initialized():
            raise RuntimeError("RayBackend needs ray.init() first")
        self.metrics = RunMetrics.remote(run_name)

    def snapshot(self) -> ClusterSnapshot:
        """Alive nodes' totals, `cluster_resources()` and `available_resources()`."""
        nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n["Alive"])
        return ClusterSnapshot(nodes=nodes, total=dict(ray.cluster_resources()),
                               available=dict(ray.available_resources()))

    def submit(self, name: str, executor: Executor, stage: AnyStageSpec, task: StageTask) -> Any:
        """Start the stage's Ray task.

        Its runtime env (inherited by the Train controller and workers it starts; env vars
        merge with the job's) pins RAY_ADDRESS to this cluster: Train V2's placement-group
        cleaner calls the state API without an address, which fails on a machine running
        several Ray clusters; and it turns on Train state tracking for the dashboard.
        """
        env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
               "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
        return stage_task.options(name=f"dreamray-stage:{name}",
                                  runtime_env={"env_vars": env}).remote(executor, stage, task)

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        """Finished object refs."""
        handles = list(handles)
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if done:
            # ray.wait returns exactly num_returns refs: collect every other finished one too.
            done, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return done

    def result(self, handle: Any) -> StageOutcome:
        """The stage's outcome.

        Raises:
            StageError: the stage's own error as one line, its remote traceback as details.
        """
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            raise StageError(error_line(cause), str(err)) from None

    def publish(self, name: str, state: str, info: Mapping[str, Any]) -> None:
        """Set the stage's gauges (fire and forget)."""
        self.metrics.publish.remote(name, state, dict(info))
