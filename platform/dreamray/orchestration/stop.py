"""A driver's stop request: ask running train stages to checkpoint and stop, within a grace
period (`dreamray.train.preemption` is the workers' side)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from dreamray.orchestration.storage import RunStorage
from dreamray.train.preemption import PREEMPT_FILE, preempt_request

log = logging.getLogger("dreamray.orchestration")


@dataclass
class StopRequest:
    """A stop the driver was asked for (e.g. SIGTERM), and which stages were told.

    Attributes:
        reason: why, for the ledger and the error.
        deadline: epoch seconds after which the driver stops waiting.
        asked: the train run dirs (run-relative) already given the request.
    """

    reason: str
    deadline: float
    asked: set[str] = field(default_factory=set)

    def ask(self, storage: RunStorage, train_rels: Mapping[str, str]) -> bool:
        """Give every running train stage not yet asked the request file.

        Args:
            storage: the run storage.
            train_rels: stage name -> its run-relative Ray Train run dir.

        Returns:
            Whether to keep waiting for the stages (False once the deadline has passed).
        """
        for name, rel in train_rels.items():
            if rel not in self.asked:
                storage.write_text(f"{rel}/{PREEMPT_FILE}", preempt_request(self.reason))
                self.asked.add(rel)
                log.warning("stage %s: asked to checkpoint and stop (%s)", name, self.reason)
        return time.time() < self.deadline
