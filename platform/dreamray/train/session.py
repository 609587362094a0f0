"""What the train worker needs from its runtime, as a small interface.

The Ray Train implementation lives in `dreamray.orchestration.launcher` (the only module that
imports `ray.train`); `LocalSession` runs the same worker in this process with world size 1, for
tests and benchmarks: checkpoints are copied under a local directory, reports are kept in a list.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from dreamray.train.checkpoint import NoUsableCheckpointError, local_checkpoint_problems

logger = logging.getLogger(__name__)


class Session(Protocol):
    """The runtime of one train worker."""

    rank: int
    local_rank: int
    world_size: int
    attempt_dir: Path  # a per-run scratch dir on shared storage (markers, TensorBoard)

    def latest_checkpoint(self) -> Any:
        """A context manager yielding the newest usable checkpoint as a local dir, or None.

        Usable: `dreamray.train.checkpoint.checkpoint_problems` finds nothing wrong; newer
        unusable ones are passed over (and logged).
        """

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Report metrics (every rank calls it, the same number of times), with this rank's
        checkpoint directory when checkpointing."""

    def dataset_shard(self) -> Any:
        """This rank's shard of the stage dataset (a Ray `DataIterator`)."""


class LocalSession:
    """World size 1 in this process: checkpoints under `root/checkpoint_<n>`, reports in memory."""

    rank = 0
    local_rank = 0
    world_size = 1

    def __init__(self, root: str | Path, shard: Any = None):
        """Args:
        root: directory for checkpoints and the run's scratch files.
        shard: optional dataset shard (anything with `iter_batches`), for pipeline tests.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.attempt_dir = self.root
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = sorted(self.root.glob("checkpoint_*"))
        self._shard = shard
        self.passed_over: list[str] = []  # unusable checkpoints, newest first, with why

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The newest usable checkpoint (also one written by an earlier session on the root).

        Raises:
            NoUsableCheckpointError: there are checkpoints, none usable.
        """
        for ckpt in reversed(self.checkpoints):
            problems = local_checkpoint_problems(ckpt)
            if not problems:
                yield ckpt
                return
            self.passed_over.append(f"{ckpt.name}: {'; '.join(problems)}")
            logger.warning("checkpoint %s is not usable (%s); trying an older one", ckpt,
                           "; ".join(problems))
        if self.checkpoints:
            raise NoUsableCheckpointError(
                f"{self.root}: no usable checkpoint: {' | '.join(self.passed_over)}")
        yield None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Keep the metrics; copy the checkpoint directory like Ray's upload does."""
        entry = dict(metrics)
        if checkpoint_dir is not None:
            target = self.root / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint_dir, target)
            self.checkpoints.append(target)
            entry["checkpoint"] = str(target)
        self.reports.append(entry)

    def dataset_shard(self) -> Any:
        """The shard given at construction."""
        if self._shard is None:
            raise RuntimeError("LocalSession has no dataset shard: pass batches to the worker")
        return self._shard
