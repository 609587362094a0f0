"""The two stage-I branches of the tiny recipe: run together by the DAG runner vs one after the
other, on the same warm local Ray cluster. Prints one table and the ratio (target <= 0.65).

Both modes run the real stages (Ray Train + DeepSpeed through the stage launcher) from fresh run
dirs, so nothing is skipped; "sequential" is two runs of one stage each, "parallel" one run of
both. A warm-up run of one stage comes first, so one-off costs (torch extension builds, first
imports) land in neither mode. Needs the tiny assets (`make tiny`).

Each branch runs --samples-per-branch samples (default 400: 100 steps, about as long as the
~35 s of start-up of a Ray Train run here) rather than the recipe's own 16 (4 steps, where the
stage is nothing but start-up); checkpoints and reports every --checkpoint-every steps.

    .venv/bin/python benchmarks/dag_parallel.py [--num-cpus 4] [--repeats 1]
        [--samples-per-branch 400] [--checkpoint-every 25]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray

from dreamray.config import load_recipe
from dreamray.orchestration.executors import default_executors
from dreamray.orchestration.ray_backend import RayBackend
from dreamray.orchestration.runner import DagRunner

REPO = Path(__file__).resolve().parents[1]
STAGE_ONE = ["stage1_comprehension", "stage1_creation"]


def run_stages(recipe, run_dir: Path, targets: list[str]) -> tuple[float, dict[str, float]]:
    """Run `targets` into `run_dir`; return wall seconds and each stage's own seconds."""
    start = time.perf_counter()
    summary = DagRunner(
        recipe,
        str(run_dir),
        RayBackend(recipe.name),
        default_executors(),
        targets=targets,
        poll_s=0.5,
    ).run()
    wall = time.perf_counter() - start
    return wall, {n: summary.records[n].ended_at - summary.records[n].started_at for n in targets}


def one_repeat(recipe, root: Path, index: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Sequential then parallel, each from fresh run dirs."""
    seq_wall, seq_stages = 0.0, {}
    for name in STAGE_ONE:
        wall, stages = run_stages(recipe, root / f"seq{index}-{name}", [name])
        seq_wall += wall
        seq_stages.update(stages)
    par = run_stages(recipe, root / f"par{index}", STAGE_ONE)
    return {"sequential": (seq_wall, seq_stages), "parallel": par}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recipe", default=str(REPO / "pipelines/recipes/tiny.yaml"))
    parser.add_argument("--samples-per-branch", type=int, default=400,
                        help="data.num_samples of each branch; 0 = the recipe's own")
    parser.add_argument("--checkpoint-every", type=int, default=25,
                        help="checkpoint.every_n_steps of each branch; 0 = the recipe's own")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = {"root": str(REPO)}
    for key, value in (("data.num_samples", args.samples_per_branch),
                       ("checkpoint.every_n_steps", args.checkpoint_every),
                       # metrics-only reports between checkpoints would wait for Ray Train's
                       # 2 s result poll on these 0.15 s steps (docs/ARCHITECTURE.md)
                       ("checkpoint.report_every_n_steps", args.checkpoint_every)):
        if value:
            overrides |= {f"stages.{n}.{key}": value for n in STAGE_ONE}
    recipe = load_recipe(args.recipe, overrides)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dag-parallel-") as tmp:
        run_stages(recipe, Path(tmp) / "warmup", STAGE_ONE[:1])
        results = [one_repeat(recipe, Path(tmp), i) for i in range(args.repeats)]
    ray.shutdown()
    print(
        f"| mode | wall s (median of {args.repeats}) | "
        + " | ".join(f"{n} s" for n in STAGE_ONE)
        + " |"
    )
    print("|---|---|" + "---|" * len(STAGE_ONE))
    walls = {}
    for mode in ("sequential", "parallel"):
        walls[mode] = statistics.median(r[mode][0] for r in results)
        per_stage = [statistics.median(r[mode][1][n] for r in results) for n in STAGE_ONE]
        print(f"| {mode} | {walls[mode]:.1f} | " + " | ".join(f"{s:.1f}" for s in per_stage) + " |")
    print(
        f"\nparallel / sequential = {walls['parallel'] / walls['sequential']:.2f} "
        f"(target <= 0.65) on {args.num_cpus} logical CPUs"
    )
    # The stages are CPU-bound here (process start-up, imports, model build, data pipeline):
    # the ratio means something only next to the machine's cores and what else ran on them.
    print(f"machine: {os.cpu_count()} cores; 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
