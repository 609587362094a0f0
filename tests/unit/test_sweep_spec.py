"""The `sweep:` section of a train stage: validation at its key paths (with the recipe's other
errors), the trial stages it stands for, identity, and the pure parts of the sweep executor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from dreamray.config import RecipeError, load_recipe
from dreamray.config.sweep_specs import SweepSpec, trial_stage
from dreamray.contracts import STEP_METRICS
from dreamray.orchestration.identity import spec_hash, stage_identities
from dreamray.orchestration.resources import (
    copies_that_fit,
    free_beside,
    reservation,
    trial_concurrency,
)
from dreamray.orchestration.sweep_report import plot_trials, trials_table
from dreamray.orchestration.sweep_trials import SweepJob, TrialRecord, pick_winner
from dreamray.train.preemption import (
    PREEMPT_FILE,
    clear_preemption,
    preempt_request,
    request_seen,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"
TINY_SWEEP = REPO / "pipelines" / "recipes" / "tiny_sweep.yaml"
KEY = "stages.stage1_creation.sweep"
GOOD = {"space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, "num_samples": 4}


def _load(sweep, path=TINY, **more):
    return load_recipe(path, {"root": "/x", KEY: sweep, **more}, check_paths=False)


def _problems(sweep, **more) -> list[str]:
    with pytest.raises(RecipeError) as info:
        _load(sweep, **more)
    return info.value.problems


@pytest.mark.parametrize(
    ("space", "line"),
    [
        ({"optim.lrr": {"uniform": [0.0, 1.0]}},
         f"{KEY}.space.optim.lrr: not a field of the stage"),
        ({"optimm.lr": {"choice": [0.1]}}, f"{KEY}.space.optimm.lr: not a field of the stage"),
        ({"optim.lr.x": {"choice": [0.1]}}, f"{KEY}.space.optim.lr.x: not a field of the stage"),
        ({"data.mode": {"uniform": [0.0, 1.0]}},
         f"{KEY}.space.data.mode: a uniform distribution needs a numeric field"),
        ({"model.gradient_checkpointing": {"loguniform": [0.1, 1.0]}},
         f"{KEY}.space.model.gradient_checkpointing: a loguniform distribution needs a numeric"),
        ({"optim": {"choice": [{"lr": 0.1}]}}, f"{KEY}.space.optim: is a section, not a field"),
        ({"scaling.num_workers": {"choice": [1, 2]}},
         f"{KEY}.space.scaling.num_workers: cannot be swept"),
        ({"optim.warmup_ratio": {"uniform": [0.0, 2.0]}},
         f"{KEY}.space.optim.warmup_ratio: 2.0 is not a value the stage accepts"),
        ({"deepspeed.zero_stage": {"choice": [2, 5]}},
         f"{KEY}.space.deepspeed.zero_stage: 5 is not a value the stage accepts"),
        ({"optim.lr": {"normal": [0.0, 1.0]}}, f"{KEY}.space.optim.lr: expected one of"),
        ({"optim.lr": {"loguniform": [0.0, 1.0]}}, "loguniform bounds must be positive"),
        ({"optim.lr": {"uniform": [0.2, 0.1]}}, "low < high"),
    ],
)
def test_bad_search_space_keys_are_named_with_their_key_path(space, line):
    problems = _problems({**GOOD, "space": space})
    assert any(p.startswith(line) or line in p for p in problems), problems


def test_choice_is_allowed_for_any_field_type():
    recipe = _load({**GOOD, "space": {"data.mode": {"choice": ["creation", "joint"]},
                                      "loss.normalization": {"choice": ["step", "micro_batch"]},
                                      "deepspeed.zero_stage": {"choice": [1, 2]}}})
    assert set(recipe.stages["stage1_creation"].sweep.space) == {
        "data.mode", "loss.normalization", "deepspeed.zero_stage"}


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"num_samples": 0}, f"{KEY}.num_samples: Input should be greater than or equal to 1"),
        ({"metric": "accuracy"}, f"{KEY}.metric: 'accuracy' is not a metric train steps report"),
        ({"metric": "lm_loss"}, f"{KEY}.metric: a data.mode creation stage never reports lm_loss"),
        ({"mode": "best"}, f"{KEY}.mode: Input should be 'min' or 'max'"),
        ({"scheduler": {"kind": "asha", "grace_period": 4}},
         f"{KEY}.scheduler.grace_period: 4 is not below the stage's 4 steps"),
        ({"scheduler": {"kind": "hyperband"}}, f"{KEY}.scheduler: Input tag 'hyperband'"),
        ({"typo": 1}, f"{KEY}.typo: Extra inputs are not permitted"),
    ],
)
def test_bad_sweep_settings(change, line):
    problems = _problems({**GOOD, **change})
    assert any(p.startswith(line) for p in problems), problems


def test_sweep_problems_come_with_the_recipes_other_problems():
    problems = _problems({**GOOD, "space": {"optim.lrr": {"uniform": [0.0, 1.0]}}},
                         **{"stages.sft.needs": ["nope"], "stages.stage2.optim.lr": "abc"})
    assert f"{KEY}.space.optim.lrr: not a field of the stage" in problems
    assert "stages.sft.needs: unknown stage 'nope'" in problems
    assert any(p.startswith("stages.stage2.optim.lr:") for p in problems)


def test_the_repo_sweep_recipe_is_tiny_with_a_four_trial_asha_sweep():
    tiny, swept = load_recipe(TINY, check_paths=False), load_recipe(TINY_SWEEP, check_paths=False)
    assert list(swept.stages) == list(tiny.stages)
    sweep = swept.stages["stage1_creation"].sweep
    assert sweep.num_samples == 4 and sweep.scheduler.kind == "asha"
    assert sweep.scheduler.grace_period == 2
    same = [n for n in tiny.stages if n != "stage1_creation"]
    assert all(swept.stages[n] == tiny.stages[n] for n in same)


def test_identity_covers_the_sweep_and_nothing_else_changes_without_one():
    plain = load_recipe(TINY, {"root": "/x"}, check_paths=False)
    stage = plain.stages["stage1_creation"]
    assert "sweep" not in stage.model_dump_json()  # identities of unswept stages unchanged
    ids = stage_identities(plain)
    swept = stage_identities(_load(GOOD))
    wider = stage_identities(_load({**GOOD, "space": {"optim.lr": {"loguniform": [1e-5, 1e-2]}}}))
    assert swept["stage1_creation"] != ids["stage1_creation"] != wider["stage1_creation"]
    assert swept["stage1_creation"] != wider["stage1_creation"]
    downstream = ("merge", "stage2", "sft")
    assert all(swept[n] != ids[n] and swept[n] != wider[n] for n in downstream)
    assert swept["stage1_comprehension"] == ids["stage1_comprehension"]


def test_a_trial_stage_has_the_trial_values_and_no_sweep():
    stage = _load(GOOD).stages["stage1_creation"]
    trial = trial_stage(stage, {"optim.lr": 3.0e-3, "loss.vm": 2.0})
    assert trial.sweep is None and trial.optim.lr == 3.0e-3 and trial.loss.vm == 2.0
    assert trial.data == stage.data and trial.model == stage.model
    assert spec_hash(trial) != spec_hash(stage)
    with pytest.raises(ValidationError, match="greater than 0"):
        trial_stage(stage, {"optim.lr": -1.0})


def test_step_metrics_are_the_numbers_a_step_reports():
    from dreamray.train.loop import StepMetrics

    fields = {f.name: f.type for f in dataclasses.fields(StepMetrics)}
    assert set(STEP_METRICS) <= set(fields)
    floats = {n for n, t in fields.items() if "float" in str(t) and n != "ended_at"}
    assert floats == set(STEP_METRICS)


def test_trials_run_as_many_at_once_as_free_resources_hold():
    stage = _load(GOOD).stages["stage1_creation"]  # 1 worker (1 CPU) + 1 map actor (1 CPU)
    assert trial_concurrency(stage, {"CPU": 4.0}) == 2
    assert trial_concurrency(stage, {"CPU": 5.9}) == 2
    assert trial_concurrency(stage, {"CPU": 1.0}) == 1  # at least one: Ray queues it
    assert trial_concurrency(stage, {"CPU": 64.0}) == 4  # never more than num_samples
    capped = _load({**GOOD, "max_concurrent": 3}).stages["stage1_creation"]
    assert trial_concurrency(capped, {"CPU": 64.0}) == 3
    assert copies_that_fit({"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 3.0}) == 3
    assert copies_that_fit({"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0}) == 0


def test_the_runner_reserves_a_sweep_s_trials_at_once_and_hands_the_number_on():
    recipe = _load(GOOD)
    swept, plain = recipe.stages["stage1_creation"], recipe.stages["stage1_comprehension"]
    # 6 CPUs, 2 held by a running stage, another job holds 1 more: 3 free = 1 trial of 2 CPUs.
    free = free_beside({"CPU": 6.0}, {"CPU": 2.0}, {"CPU": 3.0})
    assert free == {"CPU": 3.0}
    assert reservation(swept, free) == ({"CPU": 2.0}, 1)
    assert reservation(swept, {"CPU": 8.0}) == ({"CPU": 8.0}, 4)
    assert reservation(plain, {"CPU": 8.0}) == ({"CPU": 2.0}, None)


def _trial(trial_id, status, metric, values):
    return TrialRecord(trial_id=trial_id, run_name=f"r_{trial_id}", values=values,
                       status=status, metric=metric, steps=4 if status == "completed" else 2,
                       history=[[2, 1.0]] + ([[4, metric]] if metric is not None else []))


def test_the_winner_is_the_best_completed_trial():
    sweep = SweepSpec.model_validate(GOOD)
    trials = [_trial("a", "completed", 0.5, {"optim.lr": 1e-3}),
              _trial("b", "stopped", 0.1, {"optim.lr": 1e-2}),
              _trial("c", "completed", 0.3, {"optim.lr": 1e-4}),
              _trial("d", "errored", None, {"optim.lr": 5e-3})]
    assert pick_winner(trials, sweep).trial_id == "c"
    assert [t.winner for t in trials] == [False, False, True, False]
    biggest = SweepSpec.model_validate({**GOOD, "mode": "max"})
    assert pick_winner([_trial("a", "completed", 0.5, {}), _trial("c", "completed", 0.3, {})],
                       biggest).trial_id == "a"
    with pytest.raises(RuntimeError, match="no trial completed"):
        pick_winner([_trial("b", "stopped", 0.1, {}), _trial("d", "errored", None, {})], sweep)


def test_the_report_tables_and_plots_the_trials():
    trials = [_trial("a", "completed", 0.5, {"optim.lr": 1e-3, "data.mode": "joint"}),
              _trial("b", "stopped", 0.9, {"optim.lr": 1e-2, "data.mode": "creation"})]
    trials[0].winner = True
    details = {"metric": "loss", "mode": "min", "winner": "a",
               "trials": [dataclasses.asdict(t) for t in trials]}
    table = trials_table("s", details)
    assert "| trial | optim.lr | data.mode | loss | steps | status | winner |" in table
    assert "| a | 0.001 | joint | 0.5 | 4 | completed | **winner** |" in table
    assert "| b | 0.01 | creation | 0.9 | 2 | stopped |  |" in table
    png = plot_trials(details, log_keys={"optim.lr"})
    assert png is not None and png.startswith(b"\x89PNG")
    assert plot_trials({**details, "trials": []}, log_keys=set()) is None


def test_a_step_reported_twice_counts_once_in_a_trials_history():
    import pandas as pd

    from dreamray.orchestration.sweep_trials import _history

    frame = pd.DataFrame({"step": [2, 4, 4], "loss": [1.0, 0.5, 0.5], "lr": [0.1, None, 0.2]})
    assert _history(frame, "loss") == [[2, 1.0], [4, 0.5]]
    assert _history(frame, "lr") == [[2, 0.1], [4, 0.2]]
    assert _history(frame, "vm_loss") == [] and _history(None, "loss") == []


def test_a_stop_request_in_the_experiment_dir_reaches_every_trial_run(tmp_path):
    stage = _load(GOOD).stages["stage1_creation"]
    experiment = tmp_path / "stage1_creation-0123456789ab"
    job = SweepJob(stage=stage, name="stage1_creation", storage=str(experiment),
                   experiment=experiment.name)
    trial_run = Path(job.local_run_dir("t1"))
    trial_run.mkdir(parents=True)
    assert not request_seen(str(trial_run)) and not job.stop_requested()
    (trial_run / PREEMPT_FILE).write_text(preempt_request("ASHA"))  # one trial only
    assert request_seen(str(trial_run)) and not job.stop_requested()
    clear_preemption(str(trial_run))
    (experiment / PREEMPT_FILE).write_text(preempt_request("SIGTERM"))  # the whole sweep
    assert request_seen(str(trial_run)) and job.stop_requested()
    clear_preemption(job.local_dir)
    assert not request_seen(str(trial_run)) and not request_seen(None)
    on_s3 = dataclasses.replace(job, storage="s3://bucket/run/train/x")
    assert on_s3.local_dir is None and not on_s3.stop_requested()
