"""Preemption: stop a train stage at its next optimizer-step boundary, with a checkpoint.

A driver that gets SIGTERM (`ray job stop`, a spot notice forwarded to it, a pod's shutdown)
asks each running train stage to stop by writing `PREEMPT_FILE` into the stage's Ray Train run
directory. Every rank looks for it after each optimizer step; one all-reduce makes the ranks
agree, so they write the checkpoint together (it is a collective) and return. Ray Train then
ends the run normally with a non-final latest checkpoint, and a re-submission continues from
that step like any resume. The launcher removes the file before the next `fit()`.

The file is looked for in the local run dir (`RunInfo.run_dir`) and in the directory above it:
a swept stage's trials are Ray Train runs inside the sweep's Tune experiment dir, which is the
stage's run dir as the driver knows it, so one request there stops every trial. (Above a plain
stage's run dir is the run's Train storage, where no request is written.) A stage whose Ray
Train storage is object storage is not asked, and stops with the driver (resuming from its
last periodic checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PREEMPT_FILE = "preempt_requested.json"


class Preempted(Exception):
    """Raised inside the worker after the preemption checkpoint: the stage stops here."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request after step {step}")
        self.step = step


def preempt_request(reason: str) -> str:
    """The request file's text (when and why), written by the driver.

    Args:
        reason: e.g. "SIGTERM to the driver".

    Returns:
        JSON text.
    """
    return json.dumps({"at": time.time(), "reason": reason})


def clear_preemption(run_dir: str | None) -> None:
    """Remove an earlier request, so that a re-submitted stage runs on (local run dirs).

    Args:
        run_dir: the stage's Ray Train run dir, or None.
    """
    if run_dir is not None:
        (Path(run_dir) / PREEMPT_FILE).unlink(missing_ok=True)


def request_seen(run_dir: str | None) -> bool:
    """Whether a request is in the run dir or the directory above it (see the module doc).

    Args:
        run_dir: a local Ray Train run dir, or None.

    Returns:
        Whether a request file is there.
    """
    if run_dir is None:
        return False
    return any((d / PREEMPT_FILE).is_file() for d in (Path(run_dir), Path(run_dir).parent))


def preemption_requested(run_dir: str | None, world_size: int) -> bool:
    """Whether any rank sees a request (collective when `world_size` > 1: every rank calls it
    after every step).

    Args:
        run_dir: the stage's local Ray Train run dir, or None.
        world_size: ranks in the gang.

    Returns:
        The gang's common answer.
    """
    import torch  # here: the launcher imports this module and must stay torch-free
    import torch.distributed as dist

    seen = request_seen(run_dir)
    flag = torch.tensor([1.0 if seen else 0.0])
    if world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)
