"""`dreamray_eval_*` Ray metrics and a progress bar for evaluation runs."""

from __future__ import annotations

import sys
import time
from typing import Any

import ray
from tqdm import tqdm


class EvalProgress:
    """Counts items done and skipped for one task, on a tqdm bar and as Ray metrics.

    Metrics (tag `task`): `dreamray_eval_items_total`, `dreamray_eval_skipped_total` (counters)
    and `dreamray_eval_items_per_second` (gauge, over the whole run so far).
    """

    def __init__(self, task: str, total: int, enabled: bool = True) -> None:
        """Start counting.

        Args:
            task: the tag value, e.g. `fid_features:generated`.
            total: items expected (for the bar).
            enabled: show the bar (metrics are recorded either way when Ray is up).
        """
        self.tags = {"task": task}
        self.start = time.perf_counter()
        self.done = 0
        self.bar = tqdm(total=total, desc=task, unit="img", disable=not enabled, file=sys.stderr)
        self.metrics = _make_metrics() if ray.is_initialized() else None

    def update(self, done: int, skipped: int = 0) -> None:
        """Record a finished chunk of `done` items, `skipped` of them left out."""
        self.done += done
        self.bar.update(done)
        if self.metrics is not None:
            items, skips, rate = self.metrics
            items.inc(done, tags=self.tags)
            if skipped:
                skips.inc(skipped, tags=self.tags)
            rate.set(self.done / max(time.perf_counter() - self.start, 1e-9), tags=self.tags)

    def close(self) -> float:
        """Close the bar; return the seconds since the start."""
        self.bar.close()
        return time.perf_counter() - self.start


def _make_metrics() -> tuple[Any, Any, Any]:
    from ray.util.metrics import Counter, Gauge

    keys = ("task",)
    return (
        Counter("dreamray_eval_items_total", "evaluation items processed", tag_keys=keys),
        Counter("dreamray_eval_skipped_total", "evaluation items skipped", tag_keys=keys),
        Gauge("dreamray_eval_items_per_second", "evaluation throughput", tag_keys=keys),
    )
