"""Stage executors and the wrapper every stage runs in (inside a Ray task, or a thread).

`execute_stage` turns the runner's run-relative `StageTask` into a `StageContext` of local
paths: on a local run directory the artifact is written in place; on remote storage (any other
pyarrow.fs URI) the inputs are copied to a local scratch directory first and the artifact is
uploaded after, so executors only ever see local directories.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dreamray.config.specs import AnyStageSpec, EvalStageSpec, TrainStageSpec
from dreamray.contracts import (
    BASE_SOURCE,
    CONFIG_FILE,
    EVAL_KIND,
    MERGE_KIND,
    PRECOMPUTE_KIND,
    TRAIN_KIND,
    StageRef,
)
from dreamray.orchestration.context import Executor, StageContext, StageOutcome
from dreamray.orchestration.manifest import ManifestRecord, build_manifest, write_manifest
from dreamray.orchestration.merge import run_merge_stage
from dreamray.orchestration.storage import RunStorage

BASE_MODEL_DIR = "base_model"  # inside a base-model eval's artifact


@dataclass(frozen=True)
class StageTask:
    """One stage identity to execute, addressed relative to the run directory.

    Attributes:
        storage_uri: the run directory (local path or URI).
        artifact_rel: run-relative artifact directory.
        input_rels: stage name -> run-relative artifact directory of each input.
        context: the stage context, with `artifact_dir`/`inputs` still run-relative.
    """

    storage_uri: str
    artifact_rel: str
    input_rels: dict[str, str] = field(default_factory=dict)
    context: StageContext | None = None


def _localize(task: StageTask, storage: RunStorage, scratch: Path | None) -> StageContext:
    assert task.context is not None
    if scratch is None:
        inputs = {n: str(storage.local_path(r)) for n, r in task.input_rels.items()}
        artifact = str(storage.local_path(task.artifact_rel))
    else:
        inputs = {n: str(storage.download_dir(r, scratch / "inputs" / n))
                  for n, r in task.input_rels.items()}
        artifact = str(scratch / "artifact" / Path(task.artifact_rel).name)
    return replace(task.context, inputs=inputs, artifact_dir=artifact)


def execute_stage(executor: Executor, stage: AnyStageSpec, task: StageTask) -> StageOutcome:
    """Run one stage executor with local paths and time it.

    Args:
        executor: the stage kind's executor.
        stage: the stage spec.
        task: what to run and where its files live.

    Returns:
        The executor's outcome, with `started_at`/`ended_at`/`node_id` filled in when the
        executor left them empty, and `artifact_dir` pointing at the run storage.
    """
    # The dashboard lists Train V2 runs only when state tracking is on in the process that
    # calls fit(): this one.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    storage = RunStorage(task.storage_uri)
    scratch = None if storage.is_local else Path(tempfile.mkdtemp(prefix="dreamray-stage-"))
    started = time.time()
    try:
        ctx = _localize(task, storage, scratch)
        outcome = executor(stage, ctx)
        if scratch is not None:
            storage.delete_dir(task.artifact_rel)
            storage.upload_dir(outcome.artifact_dir, task.artifact_rel)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    outcome.artifact_dir = storage.uri_of(task.artifact_rel)
    outcome.started_at = outcome.started_at or started
    outcome.ended_at = outcome.ended_at or time.time()
    outcome.node_id = outcome.node_id or _node_id()
    return outcome


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - the node id is informational only
        return None


def run_train(stage: TrainStageSpec, ctx: StageContext) -> StageOutcome:
    """The train executor: one Ray Train run of the stage, via the stage launcher, or, for a
    stage with a `sweep`, a Ray Tune search of such runs whose best one is the artifact.

    Args:
        stage: the train stage.
        ctx: local paths; `train_storage` + `train_run_name` make a re-run resume.

    Returns:
        The launcher's (or the sweep's) outcome.
    """
    from dreamray.orchestration.launcher import run_train_stage

    if stage.sweep is not None:
        from dreamray.orchestration.sweep import run_sweep_stage

        return run_sweep_stage(stage, ctx)

    return run_train_stage(stage, name=ctx.name, storage_path=ctx.train_storage,
                           run_name=ctx.train_run_name, artifact_dir=ctx.artifact_dir,
                           inputs=dict(ctx.inputs))


def run_eval(stage: EvalStageSpec, ctx: StageContext) -> StageOutcome:
    """The eval executor: `dreamray.evals.stage.run_eval_stage` on the model artifact.

    The eval writes into the artifact dir itself (not a temp dir): its results stores are keyed
    by item, so a re-run after a failure resumes where it stopped; stage.json is written last,
    over everything the eval left there.

    Args:
        stage: an EvalStageSpec.
        ctx: `inputs` holds the model artifact when `eval.model` is `stage:<name>`.

    Returns:
        The outcome; `metrics` are the result's numeric top-level values.
    """
    from dreamray.evals.stage import run_eval_stage

    started = time.time()
    source = stage.eval.model
    Path(ctx.artifact_dir).mkdir(parents=True, exist_ok=True)
    if source == BASE_SOURCE:
        model_dir = str(base_model_artifact(stage, Path(ctx.artifact_dir) / BASE_MODEL_DIR))
    else:
        ref = StageRef.parse(source)
        model_dir = ctx.inputs[ref.name] if ref is not None else source
    result = run_eval_stage(stage, model_dir, ctx.artifact_dir)
    metrics = {k: v for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    write_manifest(ctx.artifact_dir, build_manifest(ctx.artifact_dir, ManifestRecord(
        stage=ctx.name, kind=EVAL_KIND, spec_hash=ctx.spec_hash, identity=ctx.identity,
        inputs=ctx.input_digests, metrics=metrics)))
    return StageOutcome(artifact_dir=ctx.artifact_dir, metrics=metrics, started_at=started,
                        ended_at=time.time())


def base_model_artifact(stage: EvalStageSpec, out_dir: Path) -> Path:
    """The artifact of an eval's base model: the stage's `base_model` towers with fresh plugins
    drawn under its `seed`, as a train stage's workers build them (`train/worker.py`), so the
    eval sees the model stage I starts from. Kept across a resumed eval (same spec, same bytes).

    Args:
        stage: an eval stage with `eval.model: base`.
        out_dir: where the artifact goes.

    Returns:
        `out_dir`.
    """
    import torch

    from dreamray.model.build import build_dreamllm

    if (out_dir / CONFIG_FILE).is_file():
        return out_dir
    assert stage.base_model is not None  # the spec's validator guarantees it
    torch.manual_seed(stage.seed)
    return build_dreamllm(stage.base_model).save_pretrained(out_dir)


def default_executors() -> Mapping[str, Executor]:
    """Stage kind -> executor, as used by `pipelines/full_recipe.py`."""
    from dreamray.orchestration.precompute import run_precompute_stage

    return {TRAIN_KIND: run_train, MERGE_KIND: run_merge_stage, EVAL_KIND: run_eval,
            PRECOMPUTE_KIND: run_precompute_stage}
