"""A swept train stage on Ray Tune: every trial is the stage's own Ray Train run.

Each trial is a Tune function trainable (`run_trial`) that sets the trial's values on the stage
(`dreamray.config.sweep_specs.trial_stage`) and runs it through the launcher's
`fit_train_run`, with a `TuneReportCallback` so that the steps Ray Train reports reach Tune's
scheduler (ASHA stops a trial by asking its gang to stop: `sweep_asha.GracefulASHA`). The Tune
experiment lives at `<train storage>/<stage>-<id12>/`, each trial's Train run inside it as
`<stage>-<id12>_<trial id>`, so a killed sweep is restored by Tune (`Tuner.restore`): finished
trials are not re-run, unfinished ones resume from their own Train checkpoints. The best
completed trial's final checkpoint is published as the stage's artifact (the same layout and
stage.json as any train stage) with every trial recorded under `sweep`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Any

from dreamray.config.specs import TrainStageSpec
from dreamray.config.sweep_specs import Choice, LogUniform, field_annotation, trial_stage
from dreamray.orchestration.context import StageContext, StageOutcome
from dreamray.orchestration.resources import trial_concurrency
from dreamray.orchestration.storage import join_uri, train_storage_args
from dreamray.orchestration.sweep_trials import (
    SWEEP_DETAILS,
    SweepFailed,
    SweepJob,
    TrialRecord,
    final_metrics,
    pick_winner,
    swept_values,
    trial_line,
    trial_record,
)
from dreamray.train.preemption import clear_preemption

log = logging.getLogger("dreamray.orchestration")
# Tune refuses a trial bundle with no resource at all; the trial only drives its Train
# controller (0 CPUs, like a stage task), so it holds one byte of memory and no CPU: the gang
# and the data actors, which it does not hold, are what limits how many trials run at once.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 1}


def param_space(stage: TrainStageSpec) -> dict[str, Any]:
    """Tune's search space for a swept stage: one domain per dotted key.

    Args:
        stage: a stage with a sweep.

    Returns:
        Dotted key -> Tune domain (integer fields sample integers, bounds included).
    """
    from ray import tune

    assert stage.sweep is not None
    space = {}
    for key, dist in stage.sweep.space.items():
        if isinstance(dist, Choice):
            space[key] = tune.choice(list(dist.choice))
            continue
        integer = field_annotation(type(stage), key) is int
        low, high = dist.candidates()
        if isinstance(dist, LogUniform):
            space[key] = (tune.lograndint(int(low), int(high) + 1) if integer
                          else tune.loguniform(low, high))
        else:
            space[key] = tune.randint(int(low), int(high) + 1) if integer else tune.uniform(low,
                                                                                           high)
    return space


def run_trial(config: dict[str, Any], job: SweepJob) -> None:
    """Tune's trainable: one Ray Train run of the trial's stage, its reports passed to Tune.

    Args:
        config: the trial's values (dotted keys).
        job: the sweep's shared facts.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dreamray.orchestration.launcher import StagePreempted, fit_train_run

    # As in `executors.execute_stage`: the dashboard lists Train runs only with this set in
    # the process that calls fit(), which is this trial's actor.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    trial_id = tune.get_context().get_trial_id()
    assert job.stage.sweep is not None
    # A trial stopped with the sweep errors, so that Tune's restore resumes it; one that ASHA
    # stopped returns, and stays stopped.
    if job.stop_requested():
        raise StagePreempted(f"trial {trial_id}: not started, the sweep was asked to stop")
    stage = trial_stage(job.stage, swept_values(job.stage.sweep, config))
    try:
        fit_train_run(stage, name=job.name, storage_path=job.storage,
                      run_name=job.run_name(trial_id), inputs=job.inputs,
                      callbacks=[TuneReportCallback()])
    except StagePreempted:
        if job.stop_requested():
            raise
        log.info("trial %s: stopped by the scheduler", trial_id)  # `sweep_asha.GracefulASHA`


def _trial_dirname(trial: Any) -> str:
    return f"tune_{trial.trial_id}"


def _new_tuner(trainable: Any, job: SweepJob, train_storage: str, concurrency: int) -> Any:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from dreamray.orchestration.sweep_asha import GracefulASHA

    sweep = job.stage.sweep
    assert sweep is not None
    scheduler = None
    if sweep.scheduler.kind == "asha":
        scheduler = GracefulASHA(
            job.local_run_dir, time_attr="step", metric=sweep.metric, mode=sweep.mode,
            max_t=job.stage.total_steps, grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor)
    fs_path, fs = train_storage_args(train_storage)
    return tune.Tuner(
        trainable, param_space=param_space(job.stage),
        tune_config=tune.TuneConfig(
            # Tune ignores `max_concurrent_trials` beside a BasicVariantGenerator: the
            # generator is what limits trials at once.
            num_samples=sweep.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=job.experiment, storage_path=fs_path,
                                  storage_filesystem=fs))


def tuner_for(job: SweepJob, train_storage: str, concurrency: int) -> tuple[Any, bool]:
    """The sweep's Tuner: restored from its experiment dir when one is there, else new.

    Args:
        job: the sweep.
        train_storage: the run's Ray Train storage, the parent of the experiment dir.
        concurrency: trials at once (a restored Tuner keeps the one it started with).

    Returns:
        (Tuner, whether it was restored).
    """
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job),
                                    TRIAL_DRIVER_RESOURCES)
    path, fs = train_storage_args(job.storage)
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        # Errored trials are retried: their Train runs resume from their own checkpoints.
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs), True
    return _new_tuner(trainable, job, train_storage, concurrency), False


def run_sweep_stage(stage: TrainStageSpec, ctx: StageContext) -> StageOutcome:
    """The executor of a train stage with a `sweep`: run (or restore) the Tune experiment and
    publish the best trial as the stage's artifact.

    Args:
        stage: the swept stage.
        ctx: local paths; `train_storage` + `train_run_name` name the Tune experiment.

    Returns:
        The winner's outcome; `events` hold one `trial` line per trial and the winner.

    Raises:
        SweepFailed: no trial completed.
        StagePreempted: the driver asked the sweep to stop (`DagRunner.request_stop`): its
            trials stopped with checkpoints, and the next submission restores the sweep.
    """
    import ray

    from dreamray.orchestration.launcher import StagePreempted

    started = time.time()
    job = SweepJob(stage=stage, name=ctx.name, experiment=ctx.train_run_name,
                   storage=join_uri(ctx.train_storage, ctx.train_run_name),
                   inputs=dict(ctx.inputs))
    clear_preemption(job.local_dir)
    # The runner decided (and reserved) how many trials run at once; a stage run on its own
    # decides from what is free now.
    concurrency = ctx.trials_at_once or trial_concurrency(stage, ray.available_resources())
    # Steps without a dream image (or supervised token) leave vm_loss (lm_loss) out of their
    # report; ASHA skips such results, Tune's strict check would fail the trial instead.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    tuner, restored = tuner_for(job, ctx.train_storage, concurrency)
    log.info("stage %s: sweep of %d trials, %d at once%s", ctx.name,
             stage.sweep.num_samples if stage.sweep else 0, concurrency,
             " (restored)" if restored else "")
    trials = [trial_record(r, job) for r in tuner.fit()]
    trials.sort(key=lambda t: t.trial_id)
    if job.stop_requested():
        raise StagePreempted(_stopped_message(trials))
    return publish_winner(job, trials, ctx, started)


def _stopped_message(trials: list[TrialRecord]) -> str:
    done = sum(t.status == "completed" for t in trials)
    return (f"preempted: the sweep stopped on request with {done} of {len(trials)} trials "
            "completed; the others stopped at a checkpoint or before they began. Re-submit "
            "the run: Tune restores the sweep and only the unfinished trials train")


def publish_winner(job: SweepJob, trials: list[TrialRecord], ctx: StageContext,
                   started: float) -> StageOutcome:
    """Publish the winner's final checkpoint as the stage's artifact, every trial recorded.

    Args:
        job: the sweep.
        trials: its trials.
        ctx: the stage context (artifact dir, spec hash).
        started: when the stage began.

    Returns:
        The outcome, with the winner's metrics, history and checkpoint.

    Raises:
        SweepFailed: no trial completed.
    """
    from dreamray.orchestration.launcher import _publish, _run_info
    from dreamray.orchestration.train_data import latest_checkpoint

    sweep = job.stage.sweep
    assert sweep is not None
    winner = pick_winner(trials, sweep)
    trained = trial_stage(job.stage, winner.values)
    checkpoint = latest_checkpoint(join_uri(job.storage, winner.run_name))
    if final_metrics(checkpoint) is None:
        raise SweepFailed(f"trial {winner.trial_id} completed but its run {winner.run_name} "
                          "has no final checkpoint")
    run = _run_info(job.name, trained, job.storage, winner.run_name)
    details = {"metric": sweep.metric, "mode": sweep.mode, "sweep_spec_hash": ctx.spec_hash,
               "winner": winner.trial_id, "trials": [asdict(t) for t in trials]}
    outcome = _publish(trained, job.name, run, checkpoint, ctx.artifact_dir, job.inputs,
                       started, extra={SWEEP_DETAILS: details})
    outcome.events = [("trial", trial_line(t, sweep.metric)) for t in trials]
    outcome.events.append(("sweep_winner", trial_line(winner, sweep.metric)))
    return outcome


