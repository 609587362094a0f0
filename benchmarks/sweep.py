"""A 4-trial sweep of the tiny recipe's stage1_creation (tiny_sweep.yaml) with as many trials at
once as the cluster holds (2 on 4 logical CPUs: a trial is 1 worker + 1 data map actor) vs the
same 4 trials one at a time (`sweep.max_concurrent: 1`). Prints one table and, last,
`ratio: <concurrent wall / sequential wall>`.

Both modes run the real trials (Ray Tune -> Ray Train + DeepSpeed through the sweep executor)
from fresh run dirs, with ASHA off so that both do the same work (which trial ASHA stops depends
on the order results arrive in). A 1-trial sweep first warms up the cluster, so one-off costs
land in neither mode. Needs the tiny assets (`make tiny`).

    .venv/bin/python benchmarks/sweep.py [--num-cpus 4] [--samples 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import ray

from dreamray.config import load_recipe
from dreamray.orchestration.context import StageContext
from dreamray.orchestration.executors import run_train
from dreamray.orchestration.identity import spec_hash, stage_identities, stage_key
from dreamray.orchestration.ledger import artifact_rel

REPO = Path(__file__).resolve().parents[1]
NAME = "stage1_creation"
SWEEP = f"stages.{NAME}.sweep"


def run_sweep(recipe, run_dir: Path) -> float:
    """Run the swept stage into a fresh run dir through its executor; return wall seconds."""
    stage, identity = recipe.stages[NAME], stage_identities(recipe)[NAME]
    ctx = StageContext(name=NAME, identity=identity, spec_hash=spec_hash(stage),
                       artifact_dir=str(run_dir / artifact_rel(NAME, identity)),
                       train_storage=str(run_dir / "train"),
                       train_run_name=stage_key(NAME, identity))
    start = time.perf_counter()
    run_train(stage, ctx)
    return time.perf_counter() - start


def sweep_recipe(args, **sweep) -> object:
    """tiny_sweep.yaml with the sweep's scheduler off and `sweep` overrides applied."""
    overrides = {"root": str(REPO), f"{SWEEP}.scheduler": {"kind": "none"}}
    if args.samples:
        overrides[f"stages.{NAME}.data.num_samples"] = args.samples
    overrides |= {f"{SWEEP}.{k}": v for k, v in sweep.items()}
    return load_recipe(REPO / "pipelines/recipes/tiny_sweep.yaml", overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--samples", type=int, default=0,
                        help="data.num_samples of the swept stage; 0 = the recipe's own (16)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             log_to_driver=False)
    load_before = os.getloadavg()[0]
    walls = {}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        run_sweep(sweep_recipe(args, num_samples=1), Path(tmp) / "warmup")
        walls["concurrent"] = run_sweep(sweep_recipe(args), Path(tmp) / "concurrent")
        walls["sequential"] = run_sweep(sweep_recipe(args, max_concurrent=1),
                                        Path(tmp) / "sequential")
    ray.shutdown()
    at_once = {"concurrent": f"as many as fit ({args.num_cpus} CPUs / 2)", "sequential": "1"}
    print("| mode | trials | trials at once | wall s |")
    print("|---|---|---|---|")
    for mode, wall in walls.items():
        print(f"| {mode} | 4 | {at_once[mode]} | {wall:.1f} |")
    print(f"machine: {os.cpu_count()} cores; 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"ratio: {walls['concurrent'] / walls['sequential']:.2f}")


if __name__ == "__main__":
    main()
