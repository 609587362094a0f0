"""The Ray job of the node-loss test (tests/e2e/test_node_loss.py): one tiny train stage whose
gang must start on the worker node, then resume on the head once that node is gone.

The head's CPUs are held by a placeholder actor pinned to the head, so the stage's gang and its
data actor can only start on the worker node. When the GCS reports a node dead (the test kills
the worker node's processes), the placeholder is released and Ray Train's restart finds room
on the head. The job writes what the test checks into `<storage>/outcome.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dreamray.config import load_recipe, parse_overrides
from dreamray.orchestration.launcher import run_train_stage
from dreamray.orchestration.train_data import data_state_of, latest_checkpoint

REPO = Path(__file__).resolve().parents[2]
STAGE = "stage1_comprehension"
OUTCOME_FILE = "outcome.json"  # in --storage: what the test checks


@ray.remote(num_cpus=0)
class Placeholder:
    """Holds CPUs (given in `.options`) until killed."""

    def ready(self) -> bool:
        return True


def _release_when_a_node_dies(placeholder, head: str, log: dict) -> None:
    while True:
        dead = [n for n in ray.nodes() if not n["Alive"] and n["NodeID"] != head]
        if dead:
            log["node_dead_seen_at"] = time.time()
            ray.kill(placeholder)
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--head-cpus", type=float, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    # Creating the placeholder makes the head's runtime-env agent unpack the job's working dir
    # again, which replaces this process's cwd (transformers resolves paths against it)
    Path(args.storage).mkdir(parents=True, exist_ok=True)
    os.chdir(args.storage)
    ray.init()
    head = ray.get_runtime_context().get_node_id()
    placeholder = Placeholder.options(
        num_cpus=args.head_cpus,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    ray.get(placeholder.ready.remote())
    log: dict = {}
    threading.Thread(target=_release_when_a_node_dies, args=(placeholder, head, log),
                     daemon=True).start()
    recipe = load_recipe(REPO / "pipelines/recipes/tiny.yaml", parse_overrides(args.overrides))
    out = run_train_stage(recipe.stages[STAGE], name=STAGE, storage_path=args.storage,
                          run_name="node-loss", artifact_dir=f"{args.storage}/artifact",
                          inputs={})
    data = data_state_of(latest_checkpoint(f"{args.storage}/node-loss"))
    outcome = {"steps": out.steps, "samples": out.samples, "consumed": len(data.consumed),
               "counted": data.counters.samples + data.counters.num_skipped,
               "trained": data.counters.samples, "history": out.history, **log}
    (Path(args.storage) / OUTCOME_FILE).write_text(json.dumps(outcome))
    print(f"outcome written: {out.steps} steps, {out.samples} samples", flush=True)

if __name__ == "__main__":
    main()
