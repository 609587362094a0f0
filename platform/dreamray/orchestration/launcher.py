"""The stage launcher: one Ray Train `TorchTrainer` per train stage (the only `ray.train` user).

`run_train_stage` resolves the stage's `stage:<name>` inits to artifact dirs, checks the stage
before asking Ray for a gang (`check_train_stage`), runs `dreamray.train.worker.train_worker` on
every rank, and publishes the artifact that the final checkpoint carries into `artifact_dir`
(temp dir + `stage.json` + rename). Same `storage_path` + `run_name` = resume from the latest
checkpoint; a run whose latest checkpoint is already final is only published again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.config.specs import TrainStageSpec
from dreamray.orchestration.preflight import check_train_stage, input_digests, resolve_init
from dreamray.orchestration.train_data import (
    RankDatasetFactory,
    data_state_of,
    dataset_name,
    latest_checkpoint,
)
from dreamray.train.faults import FAULT_ENV, parse_fault_env
from dreamray.train.run import ARTIFACT_SUBDIR, METRICS_FILE, RunInfo, tokenizer_dir

__all__ = ["TrainOutcome", "check_train_stage", "run_train_stage", "train_loop_per_worker"]


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished train stage did."""

    artifact_dir: str
    steps: int
    samples: int
    metrics: dict[str, Any]
    checkpoint: str | None
    skipped: dict[str, int]
    started_at: float
    ended_at: float
    history: list[dict[str, Any]] = field(default_factory=list)


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
        """The checkpoint Ray Train restores (latest registered), as a local dir."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
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
    return f"{storage_path.rstrip('/')}/{run_name}"


def _run_info(name: str, stage: TrainStageSpec, storage_path: str, run_name: str) -> RunInfo:
    from dreamray.orchestration.identity import spec_hash

    local = "://" not in storage_path or storage_path.startswith("file://")
    run_dir = _run_dir(storage_path.removeprefix("file://"), run_name) if local else None
    step, rank = parse_fault_env(os.environ.get(FAULT_ENV))
    return RunInfo(name=name, run_name=run_name, run_dir=run_dir, spec_hash=spec_hash(stage),
                   fault_kill_at_step=step, fault_kill_rank=rank, ray_metrics=True)


def _trainer(stage: TrainStageSpec, run: RunInfo, storage_path: str) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = stage.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    run_dir = _run_dir(storage_path, run.run_name)
    tok = tokenizer_dir(stage)
    datasets = {dataset_name(r): RankDatasetFactory(stage, tok, run_dir, r)
                for r in range(sc.num_workers)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "run": run},
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run.run_name, storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=stage.checkpoint.keep_last),
            failure_config=FailureConfig(max_failures=stage.checkpoint.max_failures),
        ),
        datasets=datasets,
        dataset_config=_data_config(),
    )


def _data_config() -> Any:
    from dreamray.data.pipeline import ingest_options
    from dreamray.orchestration.rank_ingest import PerRankDataConfig

    # Ray Train replaces every dataset's execution options with the config's: ask for the
    # record order the datasets ask for.
    return PerRankDataConfig(ingest_options())


def _is_final(checkpoint: Any) -> bool:
    from dreamray.train.checkpoint import read_meta

    if checkpoint is None:
        return False
    with checkpoint.as_directory() as d:
        return (Path(d) / ARTIFACT_SUBDIR).is_dir() and bool(read_meta(Path(d)).get("final"))


def run_train_stage(
    stage: TrainStageSpec,
    *,
    name: str,
    storage_path: str,
    run_name: str,
    artifact_dir: str,
    inputs: Mapping[str, str],
) -> TrainOutcome:
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
        ray.train.TrainingFailedError: when the workers fail beyond `max_failures`.
    """
    started = time.time()
    check_train_stage(stage, inputs)
    concrete = resolve_init(stage, inputs)
    run = _run_info(name, stage, storage_path, run_name)
    checkpoint = latest_checkpoint(_run_dir(storage_path, run_name))
    if not _is_final(checkpoint):
        checkpoint = _trainer(concrete, run, storage_path).fit().checkpoint
    return _publish(stage, name, run, checkpoint, artifact_dir, inputs, started)


def _publish(stage, name, run, checkpoint, artifact_dir, inputs, started) -> TrainOutcome:
    from dreamray.orchestration.manifest import (
        build_manifest,
        publish_dir,
        staging_dir,
        write_manifest,
    )
    from dreamray.train.state import TrainState
    from dreamray.train.telemetry import HISTORY_FILE, read_history

    history = read_history(Path(run.run_dir) / HISTORY_FILE) if run.run_dir else []
    data = data_state_of(checkpoint)
    skipped = dict(data.counters.skipped) if data is not None else {}
    tmp = staging_dir(artifact_dir)
    try:
        with checkpoint.as_directory() as d:
            shutil.copytree(Path(d) / ARTIFACT_SUBDIR, tmp, dirs_exist_ok=True)
            state = TrainState.from_json((Path(d) / "ranks/rank_0/train_state.json").read_text())
            metrics = json.loads((Path(d) / METRICS_FILE).read_text())
        manifest = build_manifest(
            tmp, stage=name, kind="train", spec_hash=run.spec_hash,
            inputs=input_digests(inputs), steps=state.step, samples=state.samples_global,
            metrics=metrics, skipped=skipped, run_name=run.run_name)
        write_manifest(tmp, manifest)
        final = publish_dir(tmp, artifact_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainOutcome(
        artifact_dir=str(final), steps=state.step, samples=state.samples_global,
        metrics=metrics, checkpoint=checkpoint.path, skipped=skipped,
        started_at=started, ended_at=time.time(), history=history)
