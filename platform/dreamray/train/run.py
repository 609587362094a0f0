"""The facts of a train run that the driver and Ray Train's own actors handle (torch-free).

`RunInfo` travels in the `train_loop_config` that Ray Train's controller unpickles, and the
launcher, imported by every stage task, names the artifact and metrics files: a module here
that imported torch would cost each of those processes seconds of CPU for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import BASE_SOURCE

ARTIFACT_SUBDIR = "artifact"
METRICS_FILE = "metrics.json"  # rank 0's last step metrics, in every checkpoint


@dataclass(frozen=True)
class RunInfo:
    """Small facts about the run that are not part of the stage spec (picklable)."""

    name: str  # the stage name
    run_name: str  # Ray Train run name
    run_dir: str | None  # local dir for history/TensorBoard/fault markers; None: none written
    spec_hash: str = ""
    fault_kill_at_step: int | None = None  # tests only: os._exit at this step, first attempt
    fault_kill_rank: int = -1  # -1: the last rank
    ray_metrics: bool = False  # export dreamray_train_* gauges (under Ray only)


def tokenizer_dir(stage: TrainStageSpec) -> str:
    """The tokenizer the stage's data is built with: the init LLM's (base or artifact)."""
    return stage.model.llm_path if stage.init.llm == BASE_SOURCE else stage.init.llm
