"""The stage launcher: one Ray Train `TorchTrainer` per train stage (the only `ray.train` user).

`run_train_stage` resolves the stage's `stage:<name>` inits to artifact dirs, checks the stage
before asking Ray for a gang (`check_train_stage`), runs `dreamray.train.worker.train_worker` on
every rank, and publishes the artifact that the final checkpoint carries into `artifact_dir`
(temp dir + `stage.json` + rename). Same `storage_path` + `run_name` = resume from the latest
checkpoint; a run whose latest checkpoint is already final is only published again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import MODEL_CARD_FILE, TRAIN_KIND
from dreamray.orchestration.context import StageOutcome
from dreamray.orchestration.preflight import check_train_stage, input_digests, resolve_init
from dreamray.orchestration.storage import join_uri, train_storage_args
from dreamray.orchestration.train_data import (
    RankDatasetFactory,
    data_state_of,
    dataset_name,
    latest_checkpoint,
    read_stored_json,
    usable_checkpoint,
)
from dreamray.train.faults import FAULT_ENV, parse_fault_env
from dreamray.train.preemption import clear_preemption
from dreamray.train.run import ARTIFACT_SUBDIR, METRICS_FILE, RunInfo, tokenizer_dir

__all__ = ["check_train_stage", "run_train_stage", "train_loop_per_worker"]

logger = logging.getLogger(__name__)


class StagePreempted(RuntimeError):
    """The stage stopped on request (`dreamray.train.preemption`) with a checkpoint; the next
    submission continues from it."""


class RaySession:
    """`dreamray.train.session.Session` on Ray Train."""

    def __init__(self, run: RunInfo):
        """Args:
        run: the run facts (the scratch dir is the run's dir in storage).
        """
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.local_rank = ctx.get_world_rank(), ctx.get_local_rank()
        self.world_size = ctx.get_world_size()
        self.attempt_dir = Path(run.run_dir) if run.run_dir else Path.cwd()

    @contextmanager
    def latest_checkpoint(self):
        """The newest usable checkpoint up to the one Ray Train restores, as a local dir.

        Raises:
            NoUsableCheckpointError: the run has checkpoints, none usable.
        """
        import ray.train

        ckpt, passed_over = usable_checkpoint(ray.train.get_checkpoint())
        for line in passed_over:
            logger.warning("checkpoint not usable, falling back: %s", line)
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """`ray.train.report` (every rank; Ray merges the rank checkpoint dirs)."""
        import ray.train

        ckpt = None if checkpoint_dir is None else ray.train.Checkpoint.from_directory(
            str(checkpoint_dir)
        )
        ray.train.report(metrics, checkpoint=ckpt)

    def dataset_shard(self) -> Any:
        """This rank's own dataset (`train_<rank>`, not split by Ray)."""
        import ray.train

        return ray.train.get_dataset_shard(dataset_name(self.rank))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on every worker: `config` = {"stage": TrainStageSpec, "run": RunInfo}."""
    # imported here: the controller and the stage task unpickle this function, not run it
    from dreamray.train.worker import train_worker

    train_worker(config["stage"], config["run"], RaySession(config["run"]))


def _run_dir(storage_path: str, run_name: str) -> str:
    return join_uri(storage_path, run_name)


def _run_info(name: str, stage: TrainStageSpec, storage_path: str, run_name: str) -> RunInfo:
    from dreamray.orchestration.identity import spec_hash

    local = "://" not in storage_path or storage_path.startswith("file://")
    run_dir = _run_dir(storage_path.removeprefix("file://"), run_name) if local else None
    step, rank = parse_fault_env(os.environ.get(FAULT_ENV))
    return RunInfo(name=name, run_name=run_name, run_dir=run_dir, spec_hash=spec_hash(stage),
                   fault_kill_at_step=step, fault_kill_rank=rank, ray_metrics=True)


def _trainer(stage: TrainStageSpec, run: RunInfo, storage_path: str,
             callbacks: Sequence[Any] = ()) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = stage.scaling
    run_dir = _run_dir(storage_path, run.run_name)
    fs_path, fs = train_storage_args(storage_path)  # Ray gets no URI (credentials) to log
    tok = tokenizer_dir(stage)
    datasets = {dataset_name(r): RankDatasetFactory(stage, tok, run_dir, r)
                for r in range(sc.num_workers)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "run": run},
        torch_config=TorchConfig(backend=sc.dist_backend),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                     resources_per_worker=sc.worker_resources()),
        run_config=RunConfig(
            name=run.run_name, storage_path=fs_path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=stage.checkpoint.keep_last),
            failure_config=FailureConfig(max_failures=stage.checkpoint.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=_data_config(),
    )


def _data_config() -> Any:
    import ray.train

    from dreamray.orchestration.rank_ingest import PerRankDataConfig

    # Ray Train replaces every dataset's execution options with the config's, taken from the
    # global DataContext (preserve_order off): ask for the record order the datasets ask for
    # (`dreamray.data.pipeline.map_chunks`). Exact resume does not depend on it
    # (`dreamray.data.progress`), the reproducible record order for a seed does.
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return PerRankDataConfig(options)


def _is_final(checkpoint: Any) -> bool:
    # Read where the checkpoint is stored: `as_directory` would download all of it from
    # object storage just for meta.json. A final checkpoint's artifact files are in its ranks'
    # listings, which `usable_checkpoint` has checked.
    from dreamray.train.checkpoint import META_FILE

    return checkpoint is not None and read_stored_json(checkpoint, META_FILE)["final"]


def run_train_stage(
    stage: TrainStageSpec,
    *,
    name: str,
    storage_path: str,
    run_name: str,
    artifact_dir: str,
    inputs: Mapping[str, str],
) -> StageOutcome:
    """Train one stage on a Ray Train gang and publish its artifact.

    Args:
        stage: the validated stage spec (`init` may reference `stage:<name>`).
        name: the stage name (stage.json, metric tags).
        storage_path: Ray Train storage (local path or URI).
        run_name: Ray Train run name; the same name + storage resumes.
        artifact_dir: the local dir the artifact is published to (atomically).
        inputs: stage name -> artifact dir, for every `stage:` reference in `stage.init`.

    Returns:
        The outcome (steps, samples, final metrics, checkpoint, skips, timings, history).

    Raises:
        StageCheckError: from `check_train_stage`, before any worker starts.
        NoUsableCheckpointError: the run has checkpoints, none of them usable.
        StagePreempted: the stage was asked to stop and did, with a checkpoint.
        ray.train.TrainingFailedError: when the workers fail beyond `max_failures`.
    """
    started = time.time()
    run, checkpoint, events = fit_train_run(stage, name=name, storage_path=storage_path,
                                            run_name=run_name, inputs=inputs)
    outcome = _publish(stage, name, run, checkpoint, artifact_dir, inputs, started)
    outcome.events = events
    return outcome


def fit_train_run(
    stage: TrainStageSpec,
    *,
    name: str,
    storage_path: str,
    run_name: str,
    inputs: Mapping[str, str],
    callbacks: Sequence[Any] = (),
) -> tuple[RunInfo, Any, list[tuple[str, str]]]:
    """Run (or resume) one Ray Train run of a stage up to its final checkpoint; no publishing.

    Args:
        stage: the validated stage spec (`init` may reference `stage:<name>`).
        name: the stage name.
        storage_path: Ray Train storage (local path or URI).
        run_name: Ray Train run name; the same name + storage resumes.
        inputs: stage name -> artifact dir, for every `stage:` reference in `stage.init`.
        callbacks: Ray Train `UserCallback`s for the run (a sweep's Tune reporting).

    Returns:
        The run facts, the final `ray.train.Checkpoint` and the events for the ledger.

    Raises:
        StageCheckError, NoUsableCheckpointError, StagePreempted, TrainingFailedError: as
        `run_train_stage`.
    """
    check_train_stage(stage, inputs)
    concrete = resolve_init(stage, inputs)
    run = _run_info(name, stage, storage_path, run_name)
    checkpoint, passed_over = usable_checkpoint(latest_checkpoint(_run_dir(storage_path,
                                                                           run_name)))
    events = [("checkpoint_fallback", line) for line in passed_over]
    if not _is_final(checkpoint):
        clear_preemption(run.run_dir)
        checkpoint = _trainer(concrete, run, storage_path, callbacks).fit().checkpoint
        if not _is_final(checkpoint):
            raise StagePreempted(_preempted_message(checkpoint))
    return run, checkpoint, events


def _preempted_message(checkpoint: Any) -> str:
    from dreamray.train.checkpoint import META_FILE

    step = read_stored_json(checkpoint, META_FILE)["step"]
    return (f"preempted: stopped on request after step {step} with a checkpoint "
            f"({checkpoint.path}); re-submit the run to continue from it")


def _publish(stage, name, run, checkpoint, artifact_dir, inputs, started,
             extra=None) -> StageOutcome:
    from dreamray.files import atomic_dir
    from dreamray.model.model_card import model_card
    from dreamray.orchestration.manifest import ManifestRecord, build_manifest, write_manifest
    from dreamray.train.state import TrainState
    from dreamray.train.telemetry import HISTORY_FILE, read_history

    history = read_history(Path(run.run_dir) / HISTORY_FILE) if run.run_dir else []
    data = data_state_of(checkpoint)
    skipped = dict(data.counters.skipped) if data is not None else {}
    skip_examples = dict(data.counters.skip_examples) if data is not None else {}
    per_source = dict(data.counters.per_source) if data is not None else {}
    with atomic_dir(artifact_dir) as tmp:
        with checkpoint.as_directory() as d:
            shutil.copytree(Path(d) / ARTIFACT_SUBDIR, tmp, dirs_exist_ok=True)
            state = TrainState.from_json((Path(d) / "ranks/rank_0/train_state.json").read_text())
            metrics = json.loads((Path(d) / METRICS_FILE).read_text())
        (tmp / MODEL_CARD_FILE).write_text(model_card(
            stage, name, state.samples_global, per_source, metrics, skipped, inputs))
        write_manifest(tmp, build_manifest(tmp, ManifestRecord(
            stage=name, kind=TRAIN_KIND, spec_hash=run.spec_hash, inputs=input_digests(inputs),
            steps=state.step, samples=state.samples_global, metrics=metrics,
            details={"skipped": skipped, "skip_examples": skip_examples,
                     "run_name": run.run_name, **(extra or {})})))
    return StageOutcome(
        artifact_dir=str(artifact_dir), steps=state.step, samples=state.samples_global,
        metrics=metrics, checkpoint=checkpoint.path, skipped=skipped,
        started_at=started, ended_at=time.time(), history=history)
