"""The train worker in this process (DeepSpeed world size 1, no Ray): overfitting, ZeRO stages,
exact resume, NaN steps, export. Batches are hand-built and fixed (tests/unit/model_fixtures)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from train_helpers import fixed_batches, nan_batch, tiny_stage

from dreamray.model.dreamllm import DreamLLM
from dreamray.model.groups import GROUP_NAMES, parameters_by_group
from dreamray.train.checkpoint import NoUsableCheckpointError, read_meta
from dreamray.train.engine import build_stage_model
from dreamray.train.loop import DataExhaustedError, NanLossError
from dreamray.train.preemption import PREEMPT_FILE, clear_preemption, preempt_request
from dreamray.train.run import ARTIFACT_SUBDIR, RunInfo
from dreamray.train.session import LocalSession
from dreamray.train.worker import train_worker

NO_CHECKPOINTS = {"every_n_steps": 1000, "keep_last": 1, "max_failures": 0}


def _run(stage, root, batches, run_dir=None) -> LocalSession:
    session = LocalSession(root)
    train_worker(stage, RunInfo(name="t", run_name="t", run_dir=run_dir), session, batches=batches)
    return session


def _losses(session: LocalSession, key: str = "loss") -> list[float]:
    by_step = {}
    for report in session.reports:
        by_step[report["step"]] = report[key]
    return [by_step[s] for s in sorted(by_step)]


def _with_lr(stage, lr):
    return stage.model_copy(update={"optim": stage.optim.model_copy(update={"lr": lr})})


@pytest.mark.parametrize("name", ["stage1_comprehension", "stage2", "sft"])
def test_overfit_fixed_set(tiny_zoo, tmp_path, name):
    stage = tiny_stage(tiny_zoo, name, steps=30, checkpoint=NO_CHECKPOINTS)
    # The LM part: the diffusion part is noisy (random t and noise), see the creation test.
    losses = _losses(_run(stage, tmp_path, fixed_batches(tiny_zoo, stage)), key="lm_loss")
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    if name == "stage1_comprehension":
        # Only the CLIP projector trains under a frozen random LLM: the floor is close, but a
        # loop that does not update stays exactly where it started.
        assert last < first - 0.1, losses
    else:
        assert last < 0.7 * first, losses


def test_overfit_creation_against_frozen_twin(tiny_zoo, tmp_path):
    """The diffusion loss is noisy (random t and noise): compare step by step against a twin
    run with lr ~ 0 that draws the same t and noise."""
    stage = tiny_stage(tiny_zoo, "stage1_creation", steps=30, checkpoint=NO_CHECKPOINTS)
    trained = _losses(_run(_with_lr(stage, 3.0e-2), tmp_path / "a", fixed_batches(tiny_zoo, stage)))
    twin = _losses(_run(_with_lr(stage, 1.0e-12), tmp_path / "b", fixed_batches(tiny_zoo, stage)))
    gaps = [a - b for a, b in zip(trained, twin, strict=True)][-10:]
    assert all(g < 0 for g in gaps) and sum(gaps) / len(gaps) < -0.03, gaps


def _group_checksums(model) -> dict[str, float]:
    return {
        g: sum(float(p.detach().double().abs().sum()) + float(p.detach().double().sum())
               for _, p in params)
        for g, params in parameters_by_group(model).items()
    }


def _changed_groups(stage, artifact) -> set[str]:
    torch.manual_seed(stage.seed)
    before = _group_checksums(build_stage_model(stage))
    after = _group_checksums(DreamLLM.from_pretrained(artifact))
    return {g for g in GROUP_NAMES if before[g] != after[g]}


ZERO_CASES = [(0, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16")]


@pytest.fixture(scope="module")
def zero_runs(tiny_zoo, tmp_path_factory):
    runs = {}
    for zero, precision in ZERO_CASES:
        base = tiny_stage(tiny_zoo, "stage2", steps=3, checkpoint=NO_CHECKPOINTS)
        ds = base.deepspeed.model_copy(update={"zero_stage": zero, "precision": precision})
        stage = base.model_copy(update={"deepspeed": ds})
        root = tmp_path_factory.mktemp(f"zero{zero}{precision}")
        runs[(zero, precision)] = (stage, _run(stage, root, fixed_batches(tiny_zoo, stage)))
    return runs


def test_zero_stages_train_the_same(zero_runs):
    reference = _losses(zero_runs[(2, "fp32")][1])
    for (zero, precision), (_, session) in zero_runs.items():
        rel = 1e-5 if precision == "fp32" else 2e-2
        assert _losses(session) == pytest.approx(reference, rel=rel), (zero, precision)


@pytest.mark.parametrize(("zero", "precision"), ZERO_CASES)
def test_export_changes_exactly_the_trainable_groups(zero_runs, zero, precision):
    stage, session = zero_runs[(zero, precision)]
    final = session.checkpoints[-1]
    artifact = final / ARTIFACT_SUBDIR
    assert _changed_groups(stage, artifact) == set(stage.trainable)
    # fp32 masters are exported even when the compute ran in bf16
    assert DreamLLM.from_pretrained(artifact).dream_embedding.dream_queries.dtype == torch.float32


class _Crash(Exception):
    pass


def _crash_inside_step(tiny_zoo, stage, root, step) -> None:
    """Train until the first micro-batch of optimizer step `step`, then die."""
    def crashing(n_micro):
        for i, batch in enumerate(fixed_batches(tiny_zoo, stage)):
            if i == n_micro:
                raise _Crash
            yield batch

    with pytest.raises(_Crash):
        _run(stage, root, crashing((step - 1) * stage.grad_accumulation_steps + 1))


def _every_two_steps(tiny_zoo, steps=5):
    return tiny_stage(tiny_zoo, "stage2", steps=steps,
                      checkpoint={"every_n_steps": 2, "keep_last": 2, "max_failures": 0})


def test_resume_continues_exactly(tiny_zoo, tmp_path):
    stage = _every_two_steps(tiny_zoo)
    reference = _losses(_run(stage, tmp_path / "ref", fixed_batches(tiny_zoo, stage)))
    # dies inside step 4: the last checkpoint is after step 2
    _crash_inside_step(tiny_zoo, stage, tmp_path / "run", 4)
    resumed = _run(stage, tmp_path / "run", fixed_batches(tiny_zoo, stage))
    steps = [r["step"] for r in resumed.reports]
    assert steps[0] == 3 and steps[-1] == 5
    final = resumed.reports[-1]
    assert final["samples_global"] == 5 * stage.deepspeed.global_batch_size
    assert _losses(resumed) == pytest.approx(reference[2:], rel=1e-6)


def test_nan_step_is_skipped_then_stops(tiny_zoo, tmp_path):
    base = tiny_stage(tiny_zoo, "stage1_comprehension", steps=4, checkpoint=NO_CHECKPOINTS)
    stage = base.model_copy(
        update={"optim": base.optim.model_copy(update={"max_consecutive_nan_steps": 2})}
    )
    good = next(fixed_batches(tiny_zoo, stage))
    accum = stage.grad_accumulation_steps
    # step 2 has one NaN micro-batch: skipped, counted; training goes on
    batches = [good] * accum + [good, nan_batch(good)] + [good] * (2 * accum)
    session = _run(stage, tmp_path / "one", iter(batches), run_dir=str(tmp_path / "one"))
    skipped = [r["nan_skipped"] for r in session.reports if r["step"] <= 4][:4]
    assert skipped == [False, True, False, False]
    with pytest.raises(NanLossError, match="2 consecutive"):
        _run(stage, tmp_path / "many", itertools.repeat(nan_batch(good)))


def test_data_exhausted_stops_clearly(tiny_zoo, tmp_path):
    stage = tiny_stage(tiny_zoo, "stage1_comprehension", steps=3, checkpoint=NO_CHECKPOINTS)
    batches = itertools.islice(fixed_batches(tiny_zoo, stage), 3)
    with pytest.raises(DataExhaustedError):
        _run(stage, tmp_path, batches)


def _damage(checkpoint: Path, how: str) -> str:
    """Truncate the largest file (a torn upload) or remove the rank's loop state."""
    if how == "truncate":
        victim = max((p for p in checkpoint.rglob("*") if p.is_file()),
                     key=lambda p: p.stat().st_size)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim = checkpoint / "ranks" / "rank_0" / "train_state.json"
        victim.unlink()
    return victim.relative_to(checkpoint).as_posix()


@pytest.mark.parametrize("how", ["truncate", "remove"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tiny_zoo, tmp_path, how):
    stage = _every_two_steps(tiny_zoo, steps=6)
    reference = _losses(_run(stage, tmp_path / "ref", fixed_batches(tiny_zoo, stage)))
    _crash_inside_step(tiny_zoo, stage, tmp_path / "run", 6)  # checkpoints after steps 2, 4
    latest = sorted((tmp_path / "run").glob("checkpoint_*"))[-1]
    damaged = _damage(latest, how)
    resumed = _run(stage, tmp_path / "run", fixed_batches(tiny_zoo, stage))
    assert len(resumed.passed_over) == 1
    assert resumed.passed_over[0].startswith(latest.name) and damaged in resumed.passed_over[0]
    steps = [r["step"] for r in resumed.reports]
    assert steps[0] == 3 and steps[-1] == 6  # from step 2's checkpoint, not from scratch
    assert resumed.reports[-1]["samples_global"] == 6 * stage.deepspeed.global_batch_size
    assert _losses(resumed) == pytest.approx(reference[2:], rel=1e-6)


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tiny_zoo, tmp_path):
    stage = _every_two_steps(tiny_zoo)
    _crash_inside_step(tiny_zoo, stage, tmp_path / "run", 4)  # one checkpoint, after step 2
    (only,) = sorted((tmp_path / "run").glob("checkpoint_*"))
    (only / "meta.json").unlink()
    with pytest.raises(NoUsableCheckpointError, match="meta.json missing"):
        _run(stage, tmp_path / "run", fixed_batches(tiny_zoo, stage))


def test_a_preemption_request_checkpoints_at_the_step_and_the_rerun_continues(tiny_zoo, tmp_path):
    stage = _every_two_steps(tiny_zoo, steps=6)
    reference = _losses(_run(stage, tmp_path / "ref", fixed_batches(tiny_zoo, stage)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def asking_during_step_3():
        for i, batch in enumerate(fixed_batches(tiny_zoo, stage)):
            if i == 2 * stage.grad_accumulation_steps:  # step 3's first micro-batch
                (run_dir / PREEMPT_FILE).write_text(preempt_request("test"))
            yield batch

    stopped = _run(stage, tmp_path / "ckpt", asking_during_step_3(), run_dir=str(run_dir))
    assert [r["step"] for r in stopped.reports][-1] == 3  # stopped at the step boundary
    assert read_meta(stopped.checkpoints[-1]) | {"step": 3, "final": False} == read_meta(
        stopped.checkpoints[-1])
    assert not (stopped.checkpoints[-1] / ARTIFACT_SUBDIR).exists()
    clear_preemption(str(run_dir))
    resumed = _run(stage, tmp_path / "ckpt", fixed_batches(tiny_zoo, stage), run_dir=str(run_dir))
    assert [r["step"] for r in resumed.reports][0] == 4
    assert _losses(resumed) == pytest.approx(reference[3:], rel=1e-6)
    assert (resumed.checkpoints[-1] / ARTIFACT_SUBDIR).is_dir()
