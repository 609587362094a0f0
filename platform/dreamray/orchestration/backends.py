"""Where the runner's stages execute: the interface, and an in-process backend of threads.

The runner only needs five things from a backend: a snapshot of the cluster's resources,
submit, wait, result, and a hook to publish stage states. `RayBackend` (ray_backend.py) runs
each stage as a Ray task; `ThreadBackend` runs each stage in a thread against a declared,
fixed set of nodes, which is how the scheduling, ledger and resume logic are tested without
a Ray cluster.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dreamray.config.specs import AnyStageSpec
from dreamray.orchestration.context import Executor, StageOutcome
from dreamray.orchestration.executors import StageTask, execute_stage
from dreamray.orchestration.resources import Bundle, total


@dataclass(frozen=True)
class ClusterSnapshot:
    """The cluster as the runner sees it when it decides what to start.

    Attributes:
        nodes: total resources of each alive node.
        total: `ray.cluster_resources()`.
        available: `ray.available_resources()`.
    """

    nodes: tuple[Bundle, ...]
    total: Bundle
    available: Bundle


class Backend(Protocol):
    """What the runner needs from an execution backend."""

    def snapshot(self) -> ClusterSnapshot:
        """Current resources."""

    def submit(self, name: str, executor: Executor, stage: AnyStageSpec, task: StageTask) -> Any:
        """Start a stage; return a handle."""

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        """Handles among `handles` that finished, waiting at most `timeout` seconds."""

    def result(self, handle: Any) -> StageOutcome:
        """The outcome of a finished handle; raises the stage's error."""

    def publish(self, name: str, state: str, info: Mapping[str, Any]) -> None:
        """Export a stage's state (metrics, dashboards); must never raise."""


class ThreadBackend:
    """Stages in threads of this process, on a fixed, declared set of nodes."""

    def __init__(self, nodes: Sequence[Bundle]):
        """Declare the cluster.

        Args:
            nodes: total resources of each (pretend) node; `available` is computed from
                the gangs this backend is running.
        """
        self.nodes = tuple(dict(n) for n in nodes)
        self.pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="stage")
        self.demand: dict[cf.Future, Bundle] = {}
        self.published: list[tuple[str, str]] = []

    def snapshot(self) -> ClusterSnapshot:
        """Totals of the declared nodes; available = totals minus running gangs."""
        cluster = total(self.nodes)
        used = total(d for f, d in self.demand.items() if not f.done())
        available = {k: v - used.get(k, 0.0) for k, v in cluster.items()}
        return ClusterSnapshot(nodes=self.nodes, total=cluster, available=available)

    def submit(self, name: str, executor: Executor, stage: AnyStageSpec,
               task: StageTask) -> cf.Future:
        """Run the stage in a thread."""
        from dreamray.orchestration.resources import stage_demand

        future = self.pool.submit(execute_stage, executor, stage, task)
        self.demand[future] = total(stage_demand(stage))
        return future

    def wait(self, handles: Sequence[cf.Future], timeout: float) -> list[cf.Future]:
        """Finished futures, waiting until one finishes or `timeout`."""
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: cf.Future) -> StageOutcome:
        """The stage's outcome, or its exception."""
        return handle.result()

    def publish(self, name: str, state: str, info: Mapping[str, Any]) -> None:
        """Remember the state transitions (tests read them)."""
        self.published.append((name, state))

    def close(self) -> None:
        """Wait for the threads to end."""
        self.pool.shutdown(wait=True)
