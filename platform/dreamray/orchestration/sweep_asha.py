"""ASHA that stops a trial by asking its gang to stop, not by killing the trial's actor.

Tune stops a trial by ending its trainable's actor; the trial's Ray Train controller dies with
it, and its gang's placement group outlives it: Ray Train's detached cleaner removes it only
where the State API answers (a cluster with a dashboard). On a cluster without one, every
stopped trial kept its gang's CPUs and the next trials' data actors waited for them forever.
Here a trial ASHA would stop gets a preemption request in its Train run dir
(`dreamray.train.preemption`, as the runner sends on SIGTERM): the gang checkpoints at its next
step and the run ends normally, so Ray Train removes its own placement group. Imported only by
`sweep.py`, lazily (Ray Tune at module level).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from dreamray.train.preemption import PREEMPT_FILE, preempt_request


class GracefulASHA(ASHAScheduler):
    """`ASHAScheduler` whose STOP becomes a preemption request to the trial's gang."""

    def __init__(self, run_dir_of: Callable[[str], str | None], **kwargs: Any):
        """Args:
        run_dir_of: trial id -> its local Ray Train run dir, or None where there is none
            (object storage): such a trial is stopped the Tune way.
        **kwargs: `ASHAScheduler`'s own (`stop_last_trials` is forced off: a trial that
            reached its last step finishes its final checkpoint).
        """
        super().__init__(**{**kwargs, "stop_last_trials": False})
        self._run_dir_of = run_dir_of
        self._asked: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """ASHA's decision; a STOP is sent to the gang and the trial continues until its gang
        has stopped (its trainable then returns)."""
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP:
            return action
        run_dir = self._run_dir_of(trial.trial_id)
        if run_dir is None:
            return action
        if trial.trial_id not in self._asked:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / PREEMPT_FILE).write_text(preempt_request("stopped by ASHA"))
            self._asked.add(trial.trial_id)
        return TrialScheduler.CONTINUE
