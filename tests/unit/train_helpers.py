"""Helpers of the in-process train tests: tiny-recipe stages on the tiny zoo, fixed batches."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import socket
import time
from pathlib import Path

import torch

from dreamray.config.load import load_recipe
from dreamray.config.specs import TrainStageSpec

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "pipelines" / "recipes" / "tiny.yaml"
TRAIN_STAGES = ("stage1_comprehension", "stage1_creation", "stage2", "sft")
# Which hand-built batch kind (tests/unit/model_fixtures.make_batch) fits a stage's data mode.
BATCH_KIND = {"comprehension": "no_dreams", "creation": "no_images", "joint": "mixed"}


def tiny_stage(zoo, name: str, steps: int | None = None, **updates) -> TrainStageSpec:
    """A train stage of the tiny recipe on the given zoo, one worker, `base` inits.

    Args:
        zoo: the `tiny_zoo` fixture.
        name: the stage name in tiny.yaml.
        steps: planned optimizer steps (sets data.num_samples); None keeps the recipe's.
        **updates: top-level fields to replace (e.g. deepspeed=..., init=...).
    """
    recipe = load_recipe(TINY_RECIPE, check_paths=False)
    stage = recipe.stages[name]
    model = stage.model.model_copy(
        update={"llm_path": str(zoo.llm), "vision_path": str(zoo.vision),
                "diffusion_path": str(zoo.diffusion)}
    )
    data = stage.data
    if steps is not None:
        data = data.model_copy(update={"num_samples": steps * stage.deepspeed.global_batch_size})
    fields = {**stage.model_dump(), "model": model.model_dump(), "data": data.model_dump(),
              "init": {"llm": "base", "plugins": "base"}, "needs": []}
    for key, value in updates.items():
        fields[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return TrainStageSpec.model_validate(fields)


def fixed_batches(zoo, stage: TrainStageSpec, kinds: tuple[str, ...] | None = None):
    """An endless cycle over a small fixed set of batches that fit the stage's data mode."""
    from model_fixtures import built_model, make_batch

    model = built_model(zoo)
    kinds = kinds or (BATCH_KIND[stage.data.mode],)
    batches = [make_batch(model, k) for k in kinds]
    return itertools.cycle(batches)


def nan_batch(batch: dict) -> dict:
    """The batch with NaN CLIP pixels (its loss is NaN)."""
    out = dict(batch)
    out["clip_pixel_values"] = torch.full_like(batch["clip_pixel_values"], float("nan"))
    return out


class RankSession:
    """A `Session` for one of several processes of this machine (no Ray): no resume; reports
    are written to `<root>/reports.rank<r>.jsonl`, the final artifact is kept under `root`."""

    def __init__(self, root: str, rank: int, world_size: int):
        self.root, self.rank, self.local_rank, self.world_size = Path(root), rank, rank, world_size
        self.attempt_dir = self.root

    def latest_checkpoint(self):
        from contextlib import nullcontext

        return nullcontext(None)

    def report(self, metrics, checkpoint_dir=None):
        import json
        import shutil

        with (self.root / f"reports.rank{self.rank}.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        artifact = None if checkpoint_dir is None else Path(checkpoint_dir) / "artifact"
        if artifact is not None and artifact.is_dir():
            shutil.copytree(artifact, self.root / "artifact", dirs_exist_ok=True)

    def dataset_shard(self):
        raise RuntimeError("batches are given")


def rank_main(
    rank: int, world_size: int, port: int, zoo_dir: str, root: str, kinds: list,
    zero_stage: int = 3, steps: int = 2,
) -> None:
    """One rank of a multi-process in-process run (a `multiprocessing` spawn target)."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu",
                      HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from dreamray.train.run import RunInfo
    from dreamray.train.worker import train_worker
    from dreamray.zoo import build_tiny_zoo

    zoo = build_tiny_zoo(Path(zoo_dir), seed=0)  # already built: reused
    stage = tiny_stage(zoo, "stage2", steps=steps,
                       checkpoint={"every_n_steps": 1000, "keep_last": 1, "max_failures": 0})
    ds = stage.deepspeed.model_copy(update={"zero_stage": zero_stage, "global_batch_size": 4})
    scaling = stage.scaling.model_copy(update={"num_workers": world_size})
    stage = stage.model_copy(update={"deepspeed": ds, "scaling": scaling})
    run = RunInfo(name="t", run_name="t", run_dir=None)
    session = RankSession(root, rank, world_size)
    train_worker(stage, run, session, batches=fixed_batches(zoo, stage, (kinds[rank],)))


def _rank_entry(target, *args) -> None:
    """Run one rank, then leave the process group together with the other ranks: a gloo group
    still alive at interpreter exit can abort the process ("terminate called without an active
    exception") after its work was done, failing a run that trained correctly."""
    import torch.distributed as dist

    target(*args)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def spawn_ranks(target, world_size: int, args: tuple, timeout_s: float) -> None:
    """Run `target(rank, world_size, port, *args)` in `world_size` spawned processes (gloo on a
    free local port) and fail the test if one exits non-zero or is still running at the timeout.

    Args:
        target: a module-level function (spawned processes import it by name).
        world_size: the number of ranks.
        args: the arguments after (rank, world_size, port).
        timeout_s: how long all ranks together may run.

    Raises:
        AssertionError: a rank hung (a collective that never completed) or failed.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_entry, args=(target, r, world_size, port, *args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} still running after {timeout_s}s: a collective hung"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world_size, f"a rank failed: exit codes {codes}"
