"""What a sweep's trials are: the job they share, their records, the winner (`sweep.py` runs
them; nothing here imports Ray at module level).

A `TrialRecord` is what stage.json (`sweep.trials`), the ledger's `trial` events and report.md
show of one trial; whether it completed is read from its Ray Train run's checkpoints, not
from Tune's last result (a trial restored after its run had finished reports nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.config.specs import TrainStageSpec
from dreamray.config.sweep_specs import SweepSpec
from dreamray.orchestration.storage import join_uri

SWEEP_DETAILS = "sweep"  # the stage.json key that records the trials


class SweepFailed(RuntimeError):
    """No trial of a sweep completed with the selection metric."""


@dataclass(frozen=True)
class SweepJob:
    """What every trial of one sweep needs (shipped once by `tune.with_parameters`).

    Attributes:
        stage: the swept stage (with its `sweep`).
        name: the stage name.
        storage: the Tune experiment dir, also the trials' Ray Train storage.
        experiment: the experiment name (`<stage>-<id12>`), the prefix of the trials' runs.
        inputs: stage name -> artifact dir, for every `stage:` reference of the stage.
    """

    stage: TrainStageSpec
    name: str
    storage: str
    experiment: str
    inputs: dict[str, str] = field(default_factory=dict)

    def run_name(self, trial_id: str) -> str:
        """The Ray Train run name of one trial."""
        return f"{self.experiment}_{trial_id}"

    @property
    def local_dir(self) -> str | None:
        """The experiment dir where it is a local path (else None)."""
        if "://" in self.storage and not self.storage.startswith("file://"):
            return None
        return self.storage.removeprefix("file://")

    def local_run_dir(self, trial_id: str) -> str | None:
        """One trial's Ray Train run dir where it is a local path (else None)."""
        local = self.local_dir
        return None if local is None else join_uri(local, self.run_name(trial_id))

    def stop_requested(self) -> bool:
        """Whether the driver asked the whole sweep to stop (its request in the experiment
        dir, `dreamray.train.preemption`; every trial's gang sees it too)."""
        from dreamray.train.preemption import PREEMPT_FILE

        local = self.local_dir
        return local is not None and (Path(local) / PREEMPT_FILE).is_file()


@dataclass
class TrialRecord:
    """One trial as stage.json, the ledger and report.md show it.

    Attributes:
        trial_id: Tune's trial id.
        run_name: its Ray Train run name.
        values: swept key -> the trial's value.
        status: `completed`, `stopped` (by the scheduler) or `errored`.
        metric: the last reported value of the selection metric, if any.
        steps: the last step it reported.
        history: `[step, metric]` pairs as reported.
        error: the error line of an errored trial.
        winner: whether its artifact is the stage's.
    """

    trial_id: str
    run_name: str
    values: dict[str, Any]
    status: str
    metric: float | None = None
    steps: int = 0
    history: list[list[float]] = field(default_factory=list)
    error: str | None = None
    winner: bool = False


def _plain(value: Any) -> Any:
    # Tune's samplers return numpy scalars; specs and JSON want Python ones.
    return value.item() if hasattr(value, "item") else value


def swept_values(sweep: SweepSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """The swept keys of a Tune trial config, as plain Python values.

    Args:
        sweep: the sweep.
        config: a trial's config (Tune may add nothing else, but only the keys are read).

    Returns:
        Dotted key -> value, in the order of `sweep.space`.
    """
    return {key: _plain(config[key]) for key in sweep.space if key in config}

def final_metrics(checkpoint: Any) -> dict[str, Any] | None:
    """The last step's metrics (and `step`) of a run whose latest checkpoint is final.

    Args:
        checkpoint: a run's latest `ray.train.Checkpoint`, or None.

    Returns:
        The metrics, or None when there is no checkpoint or it is not the final one. Reads
        two small files where the checkpoint is stored, never its weights.
    """
    if checkpoint is None:
        return None
    from dreamray.orchestration.train_data import read_stored_json
    from dreamray.train.checkpoint import META_FILE
    from dreamray.train.run import METRICS_FILE

    meta = read_stored_json(checkpoint, META_FILE)
    if not meta["final"]:
        return None
    return {**read_stored_json(checkpoint, METRICS_FILE), "step": meta["step"]}

def trial_record(result: Any, job: SweepJob) -> TrialRecord:
    """One Tune `Result` as a `TrialRecord` (winner not yet decided).

    Args:
        result: an entry of the `ResultGrid`.
        job: the sweep.

    Returns:
        The record: its values, status, last metric and metric history.
    """
    from dreamray.orchestration.train_data import latest_checkpoint

    sweep = job.stage.sweep
    assert sweep is not None
    # A trial that errored before its first report (stopped before it began) has no metrics;
    # its directory is `tune_<trial id>` (`sweep._trial_dirname`).
    trial_id = result.metrics.get("trial_id") or Path(result.path).name.removeprefix("tune_")
    final = final_metrics(latest_checkpoint(join_uri(job.storage, job.run_name(trial_id))))
    history = _history(result.metrics_dataframe, sweep.metric)
    if final is not None and sweep.metric in final and (not history
                                                         or history[-1][0] < final["step"]):
        history.append([final["step"], float(final[sweep.metric])])
    status = "completed" if final is not None else "stopped"
    last = final or result.metrics
    return TrialRecord(
        trial_id=trial_id, run_name=job.run_name(trial_id),
        values=swept_values(sweep, result.config or {}),
        status="errored" if result.error is not None else status,
        metric=history[-1][1] if history else None,
        steps=int(last["step"]) if "step" in last else 0, history=history,
        error=None if result.error is None else f"{type(result.error).__name__}: "
                                                f"{str(result.error)[:400]}")


def _history(frame: Any, metric: str) -> list[list[float]]:
    if frame is None or metric not in frame or "step" not in frame:
        return []
    rows = frame[["step", metric]].dropna()
    # A step reported twice (metrics, then the checkpoint at the same step) counts once.
    by_step = {int(s): float(v) for s, v in zip(rows["step"], rows[metric], strict=True)
               if math.isfinite(float(v))}
    return [[s, v] for s, v in sorted(by_step.items())]


def pick_winner(trials: list[TrialRecord], sweep: SweepSpec) -> TrialRecord:
    """Mark and return the best completed trial by the sweep's metric and mode.

    Args:
        trials: every trial of the sweep.
        sweep: the sweep (metric, mode).

    Returns:
        The winner (ties go to the first in trial order).

    Raises:
        SweepFailed: when no trial completed with a value of the metric.
    """
    done = [t for t in trials if t.status == "completed" and t.metric is not None]
    if not done:
        states = ", ".join(f"{t.trial_id}: {t.status}" for t in trials)
        raise SweepFailed(f"no trial completed with a value of {sweep.metric!r} ({states})")
    sign = 1.0 if sweep.mode == "min" else -1.0
    winner = min(done, key=lambda t: sign * t.metric)  # type: ignore[operator]
    winner.winner = True
    return winner

def trial_line(trial: TrialRecord, metric: str) -> str:
    """One line per trial for the ledger's event log."""
    values = ", ".join(f"{k}={_short(v)}" for k, v in trial.values.items())
    value = "-" if trial.metric is None else f"{trial.metric:.6g}"
    return (f"{trial.trial_id} {trial.status} at step {trial.steps}: {metric}={value} "
            f"({values})" + (f"; {trial.error}" if trial.error else ""))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
