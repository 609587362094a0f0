"""Fault injection for tests: kill one worker at a given step, on the first attempt only.

Off by default. The launcher reads ``DREAMRAY_FAULT_KILL_AT_STEP=<step>[:<rank>]`` from its own
environment (Ray workers do not inherit the driver's) and passes it in `RunInfo`. The hook fires
at the start of the step's bookkeeping, before that step is checkpointed, so the step is lost and
the restarted gang redoes it from the previous checkpoint. A marker file in the run dir, created
atomically, makes it fire once per run rather than once per attempt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FAULT_ENV = "DREAMRAY_FAULT_KILL_AT_STEP"
KILL_EXIT_CODE = 17


def parse_fault_env(value: str | None) -> tuple[int | None, int]:
    """Parse ``<step>[:<rank>]``.

    Args:
        value: the environment variable's value (None or empty: off).

    Returns:
        ``(step or None, rank)``; rank -1 means the last rank.

    Raises:
        ValueError: on a malformed value.
    """
    if not value:
        return None, -1
    step, _, rank = value.partition(":")
    try:
        return int(step), int(rank) if rank else -1
    except ValueError as err:
        raise ValueError(f"{FAULT_ENV}={value!r}: expected <step>[:<rank>]") from err


def marker_path(run_dir: str | Path, step: int) -> Path:
    """The file that records that the fault at `step` has fired."""
    return Path(run_dir) / f"fault_fired_step{step}"


def maybe_kill(run: Any, session: Any, step: int) -> None:
    """`os._exit` this worker if the run asks for a fault at `step` on this rank, once.

    Args:
        run: the `RunInfo` (fault_kill_at_step, fault_kill_rank, run_dir).
        session: the worker session (rank, world size).
        step: the step just taken.
    """
    if run.fault_kill_at_step != step or run.run_dir is None:
        return
    target = run.fault_kill_rank if run.fault_kill_rank >= 0 else session.world_size - 1
    if session.rank != target:
        return
    path = marker_path(run.run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # fired on an earlier attempt
    os.close(fd)
    os._exit(KILL_EXIT_CODE)
