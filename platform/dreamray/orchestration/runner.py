"""The DAG runner: start every ready stage whose gang fits, record each one in the ledger.

Rules (docs/ARCHITECTURE.md, "Orchestration"):
- A stage is ready when every stage it needs finished (done or skipped).
- A ready stage is skipped if the ledger says done for its identity, its inputs are the
  artifacts it was made from, and its artifact passes its checksums; a corrupted artifact is
  logged, deleted and re-made. Otherwise it runs, under a Ray Train run name derived from its
  identity, so an interrupted stage resumes from its latest checkpoint.
- A stage starts only when its whole gang, plus a CPU for its Ray Data tasks, fits beside the
  runner's other running stages and in what the cluster has free; with nothing of its own
  running the runner always starts one (Ray queues it), so its stages never wait on each other.
  A stage that no placement on the cluster's nodes could ever hold fails the run before
  anything starts.
- A failure blocks what depends on it; independent stages already running are let finish.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dreamray.config import RecipeSpec, TrainStageSpec
from dreamray.orchestration.backends import Backend
from dreamray.orchestration.context import Executor, StageContext, StageError, error_line
from dreamray.orchestration.dag import DagState
from dreamray.orchestration.executors import StageTask
from dreamray.orchestration.identity import spec_hash, stage_identities, stage_key
from dreamray.orchestration.lease import DEFAULT_STALE_S, RunLease
from dreamray.orchestration.ledger import (
    Decision,
    Ledger,
    StageRecord,
    artifact_rel,
    train_rel,
)
from dreamray.orchestration.manifest import verify_artifact
from dreamray.orchestration.provenance import git_commit
from dreamray.orchestration.report import write_report
from dreamray.orchestration.resources import (
    Bundle,
    fits_now,
    free_beside,
    reservation,
    stage_demand,
    total,
)
from dreamray.orchestration.run_checks import (
    external_input_problems,
    recipe_problems,
    resource_problems,
)
from dreamray.orchestration.stop import StopRequest
from dreamray.orchestration.storage import RunStorage

log = logging.getLogger("dreamray.orchestration")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes Ray puts in remote tracebacks
POLL_S = 5.0  # how often a waiting runner re-reads the cluster's free resources


class PreflightError(ValueError):
    """A run that cannot start: every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the run cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


class RunFailed(RuntimeError):
    """Some stages failed; the others finished or were blocked."""


class RunPreempted(RunFailed):
    """The run was asked to stop (SIGTERM); its train stages stopped with a checkpoint."""


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        run_dir: the run directory (path or URI).
        states: stage -> final state (done, skipped, failed, blocked, external).
        records: stage -> ledger record, for the stages of this run.
        report: URI of report.md.
    """

    run_dir: str
    states: dict[str, str]
    records: dict[str, StageRecord]
    report: str

    def artifact(self, name: str) -> str:
        """The artifact URI of a finished stage."""
        record = self.records[name]
        assert record.artifact is not None
        return record.artifact


class DagRunner:
    """Runs (part of) a recipe into one run directory."""

    def __init__(self, recipe: RecipeSpec, run_dir: str, backend: Backend,
                 executors: Mapping[str, Executor], *, targets: Iterable[str] | None = None,
                 poll_s: float = POLL_S, steal_lock: bool = False,
                 lease_stale_s: float = DEFAULT_STALE_S):
        """Open the run directory and compute identities.

        Args:
            recipe: the validated recipe.
            run_dir: local path or pyarrow.fs URI.
            backend: where stages execute.
            executors: stage kind -> executor.
            targets: the stages to run (default: all); their other inputs must be complete
                in the run directory already.
            poll_s: seconds between resource checks while a stage waits for room.
            steal_lock: take over a stale lease of another host (`--steal-lock`).
            lease_stale_s: heartbeat age after which another driver's lease is stale.

        Raises:
            PreflightError: for unknown target names.
            LedgerVersionError: for a run directory of another ledger version.
        """
        names = list(targets) if targets is not None else list(recipe.stages)
        unknown = [n for n in names if n not in recipe.stages]
        if unknown:
            raise PreflightError([f"unknown stage {n!r}; the recipe has {list(recipe.stages)}"
                                  for n in unknown])
        self.recipe, self.backend, self.executors = recipe, backend, executors
        self.storage = RunStorage(run_dir)
        self.ledger = Ledger.open(self.storage, recipe.name)
        self.lease = RunLease(self.storage, lease_stale_s)
        self.steal_lock = steal_lock
        self.ids = stage_identities(recipe)
        self.dag = DagState(recipe, names)
        self.poll_s = poll_s
        self.handles: dict[Any, str] = {}
        self.reserved: dict[str, Bundle] = {}
        self.digests: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}
        self.records: dict[str, StageRecord] = {}
        self.git = git_commit()
        self.stop: StopRequest | None = None
        self.stop_grace_s = max((s.checkpoint.preemption_grace_s for s in recipe.stages.values()
                                 if isinstance(s, TrainStageSpec)), default=0.0)

    def request_stop(self, reason: str) -> None:
        """Ask the run to stop: no new stage starts, running train stages are asked to
        checkpoint at their next step, and the run ends when they have or the grace period
        (`checkpoint.preemption_grace_s`) is over. Only records the request, so a signal
        handler may call it.

        Args:
            reason: why, for the ledger and the error (e.g. "SIGTERM to the driver").
        """
        if self.stop is None:
            self.stop = StopRequest(reason, time.time() + self.stop_grace_s)

    def run(self) -> RunSummary:
        """Run every target stage to completion (or failure) and write the report.

        Returns:
            The summary.

        Raises:
            LeaseHeldError: another driver holds the run directory.
            PreflightError: before anything starts, listing every problem.
            RunFailed: after the run, if a stage failed (report.md is written anyway).
        """
        self.lease.acquire(steal=self.steal_lock)
        try:
            self.preflight()
            while self.dag.unfinished():
                if self.stop is None:
                    self.start_ready()
                elif not self.stop.ask(self.storage, self._running_train_rels()):
                    break  # the grace period is over
                if not self.handles:
                    break  # nothing running and nothing startable: the rest is blocked
                for handle in self.backend.wait(list(self.handles), self.poll_s):
                    self.finish(handle)
                self.lease.heartbeat()
            return self._summary()
        finally:
            self.lease.release()

    def _running_train_rels(self) -> dict[str, str]:
        return {n: train_rel(n, self.ids[n]) for n in self.dag.running()
                if isinstance(self.recipe.stages[n], TrainStageSpec)}

    def _summary(self) -> RunSummary:
        """Write report.md; the summary, or RunFailed naming the failed stages."""
        if self.stop is not None:
            for name in self.dag.running():
                self.fail(name, f"{self.stop.reason}: still running when the grace period "
                          f"({self.stop_grace_s:g} s) ended; it resumes from its last "
                          "checkpoint")
        report = write_report(self.storage, self.recipe, self.ids, self.dag.state, self.records)
        summary = RunSummary(self.storage.uri, dict(self.dag.state), self.records, report)
        failed = self.dag.failed()
        if self.stop is not None:
            raise RunPreempted(f"run stopped ({self.stop.reason}); stopped: {failed}, not "
                               f"started: {self.dag.unfinished()}; re-submit to continue\n"
                               f"report: {report}")
        if failed:
            errors = [f"{n}: {self.records[n].error}" for n in failed if n in self.records
                      and self.records[n].error]
            raise RunFailed(f"stages failed or blocked: {failed}\n" + "\n".join(errors)
                            + f"\nreport: {report}")
        return summary

    # -- preflight ------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check inputs from outside the run, merge usage, executors and resources."""
        problems, self.digests = external_input_problems(
            self.recipe, self.dag, self.ledger, self.ids, self.storage)
        problems += recipe_problems(self.recipe, self.dag, self.executors)
        problems += resource_problems(self.recipe, self.dag, self.ledger, self.ids,
                                      self.backend.snapshot())
        if problems:
            raise PreflightError(problems)

    # -- scheduling -----------------------------------------------------------------------

    def start_ready(self) -> None:
        """Skip or start every ready stage that may start now (skips may ready more)."""
        progress = True
        while progress:
            progress = False
            for name in self.dag.ready():
                decision = self._decision(name)
                if decision.action == "skip":
                    self.skip(name, decision)
                    progress = True
                elif self.can_start(name):
                    self.start(name, decision)

    def _decision(self, name: str) -> Decision:
        # Decided once per run: verifying an artifact hashes every file of it.
        if name not in self.decisions:
            digests = {d: self.digests[d] for d in self.recipe.stages[name].needs}
            self.decisions[name] = self.ledger.decide(name, self.ids[name], digests)
        return self.decisions[name]

    def can_start(self, name: str) -> bool:
        """Whether the stage's gang and data actors fit now beside the runner's running stages."""
        if not self.handles:
            return True
        demand = total(stage_demand(self.recipe.stages[name]))
        if not demand:
            return True
        snap = self.backend.snapshot()
        return fits_now(demand, snap.total, total(self.reserved.values()), snap.available)

    def skip(self, name: str, decision: Decision) -> None:
        """Mark a verified, finished stage as skipped."""
        record = self.ledger.read(name)
        assert record is not None and record.artifact_digest is not None
        record.log("skip", decision.reason)
        self.ledger.write(record)
        self.records[name], self.digests[name] = record, record.artifact_digest
        self.dag.set(name, "skipped")
        self.backend.publish(name, "skipped", {"steps": record.steps})
        log.info("stage %s: skipped (%s)", name, decision.reason)

    def start(self, name: str, decision: Decision) -> None:
        """Record the stage as running and submit it."""
        stage, identity = self.recipe.stages[name], self.ids[name]
        if decision.corrupt:
            log.warning("stage %s: artifact corrupted, re-running: %s", name,
                        "; ".join(decision.corrupt))
            self.storage.delete_dir(artifact_rel(name, identity))
        if decision.clear_checkpoints:
            log.info("stage %s: inputs changed, dropping its old checkpoints", name)
            self.storage.delete_dir(train_rel(name, identity))
        record = self._new_record(name, decision)
        self.ledger.write(record)
        snap = self.backend.snapshot()
        reserved, trials = reservation(stage, free_beside(snap.total, total(
            self.reserved.values()), snap.available))
        context = StageContext(
            name=name, identity=identity, spec_hash=spec_hash(stage),
            artifact_dir=artifact_rel(name, identity), train_storage=self._train_storage(True),
            train_run_name=stage_key(name, identity), input_digests=dict(record.input_digests),
            trials_at_once=trials)
        task = StageTask(storage_uri=self.storage.open_uri(),
                         artifact_rel=artifact_rel(name, identity),
                         input_rels={d: artifact_rel(d, self.ids[d]) for d in stage.needs},
                         context=context)
        handle = self.backend.submit(name, self.executors[stage.kind], stage, task)
        self.handles[handle] = name
        self.reserved[name] = reserved
        self.records[name] = record
        self.dag.set(name, "running")
        self.backend.publish(name, "running", {})
        log.info("stage %s: %s (%s), attempt %d", name, decision.action, decision.reason,
                 record.attempts)

    def _new_record(self, name: str, decision: Decision) -> StageRecord:
        stage, identity = self.recipe.stages[name], self.ids[name]
        prev = self.ledger.read(name)
        same = prev is not None and prev.identity == identity
        record = StageRecord(
            stage=name, kind=stage.kind, identity=identity, status="running",
            inputs={d: self.ids[d] for d in stage.needs},
            input_digests={d: self.digests[d] for d in stage.needs},
            artifact=self.storage.uri_of(artifact_rel(name, identity)),
            train_storage=self._train_storage(), train_run_name=stage_key(name, identity),
            checkpoint=self.ledger.latest_checkpoint(name, identity),
            started_at=time.time(), attempts=(prev.attempts + 1) if same and prev else 1,
            events=list(prev.events) if same and prev else [], git_commit=self.git)
        if decision.corrupt:
            record.log("corrupt", "; ".join(decision.corrupt))
        record.log(decision.action, decision.reason)
        return record

    def _train_storage(self, for_task: bool = False) -> str:
        # Executors get a plain path for a local run dir (not every library reads file://).
        if self.storage.is_local:
            return str(self.storage.local_path("train"))
        # only a stage task gets the credential-bearing form; the ledger the redacted one
        return self.storage.open_uri("train") if for_task else self.storage.uri_of("train")

    def finish(self, handle: Any) -> None:
        """Record a finished stage task: verify its artifact, or record its failure."""
        name = self.handles.pop(handle)
        self.reserved.pop(name, None)
        record = self.records[name]
        try:
            outcome = self.backend.result(handle)
        except StageError as err:
            self.fail(name, str(err), err.details)
            return
        except Exception as err:  # noqa: BLE001 - any stage error fails the stage, not the run
            self.fail(name, error_line(err), traceback.format_exc())
            return
        digest, problems = verify_artifact(self.storage, artifact_rel(name, self.ids[name]))
        if problems:
            self.fail(name, "finished, but its artifact failed verification: "
                      + "; ".join(problems))
            return
        record.status, record.artifact_digest, record.error = "done", digest, None
        record.steps, record.samples = outcome.steps, outcome.samples
        record.metrics, record.skipped = dict(outcome.metrics), dict(outcome.skipped)
        record.checkpoint = outcome.checkpoint or self.ledger.latest_checkpoint(
            name, self.ids[name])
        record.started_at, record.ended_at = outcome.started_at, outcome.ended_at
        record.node_id = outcome.node_id
        for event, detail in outcome.events:
            record.log(event, detail)
        record.log("done", f"{outcome.steps} steps in {outcome.ended_at - outcome.started_at:.1f}s")
        if outcome.history:
            self.storage.write_text(f"metrics/{stage_key(name, self.ids[name])}.jsonl",
                                    "".join(_json_line(h) for h in outcome.history))
        self.ledger.write(record)
        self.digests[name] = digest or ""
        self.dag.set(name, "done")
        self.backend.publish(name, "done", {"steps": outcome.steps,
                                            "seconds": outcome.ended_at - outcome.started_at})
        log.info("stage %s: done -> %s", name, record.artifact)

    def fail(self, name: str, message: str, details: str = "") -> None:
        """Record a failed stage; what depends on it is blocked."""
        message = _ANSI.sub("", message)
        record = self.records[name]
        record.status, record.error, record.ended_at = "failed", message[-4000:], time.time()
        record.log("failed", message[:500])
        self.ledger.write(record)
        self.dag.set(name, "failed")
        self.backend.publish(name, "failed", {})
        log.error("stage %s: failed: %s\n%s", name, message, _ANSI.sub("", details))


def _json_line(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True) + "\n"
