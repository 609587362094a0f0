"""The one train loop of every train stage: what each Ray Train worker runs.

`train_worker(stage, run, session)` builds everything from the validated stage spec (model,
DeepSpeed engine, data shard iterator, optimizer, schedule), resumes from the session's latest
checkpoint if there is one, runs the planned optimizer steps and writes the final checkpoint,
which carries the exported artifact (`artifact/`, rank 0). `dreamray.orchestration.launcher`
wraps it for Ray Train; tests run it in process with a `LocalSession` (world size 1).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dreamray.config.specs import TrainStageSpec
from dreamray.train.checkpoint import (
    Restored,
    apply_rng,
    restore_checkpoint,
    save_checkpoint,
    write_listing,
)
from dreamray.train.engine import EngineParts, build_stage_model, setup_engine
from dreamray.train.export import export_artifact
from dreamray.train.faults import maybe_kill
from dreamray.train.loop import LoopContext, StepMetrics, run_steps
from dreamray.train.preemption import Preempted, preemption_requested
from dreamray.train.run import ARTIFACT_SUBDIR, METRICS_FILE, RunInfo
from dreamray.train.session import Session
from dreamray.train.state import TrainState, seed_everything
from dreamray.train.telemetry import HISTORY_FILE, JsonlSink, Sinks, TensorBoardSink


def _device(stage: TrainStageSpec, local_rank: int) -> torch.device:
    if stage.scaling.use_gpu:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_process_group(stage: TrainStageSpec) -> None:
    """Join DeepSpeed to the process group (Ray Train made one; in process: a gloo group of 1)."""
    import deepspeed

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                    "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend=stage.scaling.dist_backend)


def _gang_meta(stage: TrainStageSpec, world_size: int) -> dict[str, Any]:
    ds = stage.deepspeed
    return {"world_size": world_size, "zero_stage": ds.zero_stage, "precision": ds.precision}


def _restore(session: Session, parts: EngineParts, meta: dict[str, Any]) -> Restored | None:
    with session.latest_checkpoint() as ckpt:
        if ckpt is None:
            return None
        return restore_checkpoint(Path(ckpt), parts.engine, parts.scheduler, session.rank, meta)


def train_worker(
    stage: TrainStageSpec,
    run: RunInfo,
    session: Session,
    batches: Iterator[Mapping[str, Any]] | None = None,
) -> TrainState:
    """Run (or resume) one train stage on this rank.

    Args:
        stage: the validated stage spec, `stage:` refs already replaced by artifact dirs.
        run: run facts (names, run dir, fault injection).
        session: the runtime (Ray Train, or `LocalSession`).
        batches: micro-batches to train on instead of the session's dataset shard (in-process
            tests and benchmarks); they are not part of the checkpointed data position.

    Returns:
        The final loop state (step == stage.total_steps, or fewer when the stage was asked to
        stop: `dreamray.train.preemption`).

    Raises:
        NanLossError, DataExhaustedError, DataSkipError: see `dreamray.train.loop` / data.
    """
    init_process_group(stage)
    torch.manual_seed(stage.seed)  # identical model init on every rank (random plugins)
    model = build_stage_model(stage)
    parts = setup_engine(stage, model, session.world_size, _device(stage, session.local_rank))
    meta = _gang_meta(stage, session.world_size)
    restored = _restore(session, parts, meta)
    state = restored.state if restored is not None else TrainState()
    data = _data_feed(stage, run, session, state, restored, batches)
    if restored is not None:
        apply_rng(restored)
    else:
        seed_everything(stage.seed + session.rank)
    ctx = _loop_context(stage, parts, session.world_size)
    hooks = _StepHooks(stage, run, session, parts, data, meta)
    try:
        run_steps(ctx, data.batches, state, stage.total_steps, hooks.on_step)
        hooks.finish(state)
    except Preempted:
        pass  # checkpointed at this step; the launcher reports the stage as preempted
    finally:
        hooks.close()
    return state


def _loop_context(stage: TrainStageSpec, parts: EngineParts, world_size: int) -> LoopContext:
    ds = stage.deepspeed
    return LoopContext(
        engine=parts.engine,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        accum=stage.grad_accumulation_steps,
        lm_weight=stage.loss.lm,
        vm_weight=stage.loss.vm,
        normalization=stage.loss.normalization,
        max_consecutive_nan=stage.optim.max_consecutive_nan_steps,
        device=parts.device,
        world_size=world_size,
        compute_dtype=parts.dtype,
        manual_grad_norm=ds.zero_stage == 0 and ds.precision == "fp32",
    )


def _data_feed(stage, run, session, state, restored, batches):
    from dreamray.train.feed import DataFeed

    resume = restored.data_state if restored is not None else None
    return DataFeed(stage, run, session, state, resume, batches)


class _StepHooks:
    """After every step: fault injection, metrics, reports, periodic checkpoints."""

    def __init__(self, stage, run: RunInfo, session: Session, parts: EngineParts, data, meta):
        self.stage, self.run, self.session, self.parts = stage, run, session, parts
        self.data, self.meta = data, meta
        self.sinks = _make_sinks(run, session.rank)
        self.last_metrics: dict[str, Any] = {}

    def on_step(self, metrics: StepMetrics, state: TrainState) -> None:
        maybe_kill(self.run, self.session, state.step)
        values = {**metrics.as_dict(), "samples_rank": state.samples_rank}
        self.last_metrics = values
        self.sinks.write(values)
        last = state.step == self.stage.total_steps
        if not last and preemption_requested(self.run.run_dir, self.session.world_size):
            self.checkpoint(state, final=False)
            raise Preempted(state.step)
        every = self.stage.checkpoint.every_n_steps
        if state.step % every == 0 and not last:
            self.checkpoint(state, final=False)
        elif state.step % self.stage.checkpoint.report_every_n_steps == 0:
            self.session.report(values)

    def checkpoint(self, state: TrainState, final: bool) -> None:
        """Write this rank's share and report it (collective)."""
        self.data.check_skips(final)
        with tempfile.TemporaryDirectory(prefix="dreamray-ckpt-") as tmp:
            root = Path(tmp)
            save_checkpoint(root, self.parts.engine, self.parts.scheduler, state,
                            self.data.state(), self.session.rank, {**self.meta, "final": final})
            if self.session.rank == 0:
                (root / METRICS_FILE).write_text(json.dumps(self.last_metrics, sort_keys=True))
            if final:
                export_artifact(self.stage, self.parts, self.session.rank, root / ARTIFACT_SUBDIR)
            write_listing(root, self.session.rank)
            self.session.report({**self.last_metrics, "step": state.step,
                                 "samples_global": state.samples_global, "final": final},
                                checkpoint_dir=root)

    def finish(self, state: TrainState) -> None:
        """The final checkpoint, with the artifact."""
        self.checkpoint(state, final=True)

    def close(self) -> None:
        self.sinks.close()


def _make_sinks(run: RunInfo, rank: int) -> Sinks:
    if rank != 0:
        return Sinks([])
    sinks: list[Any] = []
    if run.run_dir is not None:
        run_dir = Path(run.run_dir)
        sinks += [JsonlSink(run_dir / HISTORY_FILE), TensorBoardSink(run_dir / "tensorboard")]
    if run.ray_metrics:
        from dreamray.train.telemetry import RayMetricsSink

        sinks.append(RayMetricsSink(run.run_name, run.name))
    return Sinks(sinks)
