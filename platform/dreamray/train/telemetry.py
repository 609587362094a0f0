"""Where per-step train metrics go: a JSONL history, TensorBoard, Ray metrics.

Rank 0 writes all three (the metrics are gang-wide already). Ray metrics are named
``dreamray_train_<metric>`` and tagged ``run`` and ``stage``; they are only created when the
worker runs under Ray (the import of `ray.util.metrics` happens in the constructor).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "dreamray_train_"
GAUGES = (
    "loss", "lm_loss", "vm_loss", "lr", "grad_norm", "step_time_s", "data_wait_s", "tokens_per_s",
    "samples_per_s", "images_per_s", "step", "samples_global",
)
HISTORY_FILE = "metrics.jsonl"


class JsonlSink:
    """Appends one JSON line per step (the launcher reads it back as the stage's history)."""

    def __init__(self, path: Path):
        """Args:
        path: the history file (appended to: a resumed run continues it).
        """
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: Mapping[str, Any]) -> None:
        """Append one record."""
        with self.path.open("a") as f:
            f.write(json.dumps(dict(metrics), sort_keys=True) + "\n")

    def close(self) -> None:
        """Nothing to release."""


class TensorBoardSink:
    """TensorBoard event files under `log_dir` (scalars `train/<metric>` by step)."""

    def __init__(self, log_dir: Path):
        """Args:
        log_dir: the event-file directory (created).
        """
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, metrics: Mapping[str, Any]) -> None:
        """Add every numeric metric as a scalar at `metrics["step"]`."""
        step = int(metrics["step"])
        for key, value in metrics.items():
            if key not in ("step", "ended_at") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class RayMetricsSink:
    """`dreamray_train_*` gauges for the Ray dashboard / Prometheus."""

    def __init__(self, run: str, stage: str):
        """Args:
        run: the Ray Train run name (tag `run`).
        stage: the stage name (tag `stage`).
        """
        from ray.util import metrics

        keys = ("run", "stage")
        self.tags = {"run": run, "stage": stage}
        self.gauges = {
            name: metrics.Gauge(PREFIX + name, f"train {name} of the last step", keys)
            for name in GAUGES
        }
        self.nan_steps = metrics.Counter(PREFIX + "nan_steps", "skipped non-finite steps", keys)

    def write(self, metrics: Mapping[str, Any]) -> None:
        """Set every gauge the step has (a step without LM tokens has no `lm_loss`); count a
        skipped step."""
        for name, gauge in self.gauges.items():
            if name in metrics:
                gauge.set(float(metrics[name]), tags=self.tags)
        if metrics["nan_skipped"]:
            self.nan_steps.inc(1.0, tags=self.tags)

    def close(self) -> None:
        """Nothing to release."""


class Sinks:
    """Fan-out to several sinks."""

    def __init__(self, sinks: list[Any]):
        """Args:
        sinks: objects with `write(metrics)` and `close()`.
        """
        self.sinks = sinks

    def write(self, metrics: Mapping[str, Any]) -> None:
        """Write to every sink."""
        for sink in self.sinks:
            sink.write(metrics)

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    """The step records of a history file; a resumed run's repeated steps keep the last record.

    Args:
        path: a `metrics.jsonl`.

    Returns:
        Records sorted by step, one per step (empty if the file does not exist).
    """
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]
