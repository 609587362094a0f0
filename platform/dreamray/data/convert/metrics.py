"""Conversion observability: Ray metrics (`dreamray_convert_*`, tagged by source) and the summary
printed at the end of a run.

The metrics are live counts of work done (recorded from inside the tasks); the manifest, built
from the tasks' results, is the truth (a file rolled back after a failure stays counted here as
read).
"""

from __future__ import annotations

from functools import cache

import ray

METRIC_PREFIX = "dreamray_convert_"


@cache
def _instruments() -> dict:
    """One set of instruments per process (Ray registers a metric name once per worker)."""
    from ray.util.metrics import Counter, Gauge

    return {
        "read": Counter(f"{METRIC_PREFIX}rows_read", "input rows read", tag_keys=("source",)),
        "written": Counter(
            f"{METRIC_PREFIX}rows_written", "rows written to shards", tag_keys=("source",)
        ),
        "rejected": Counter(
            f"{METRIC_PREFIX}rows_rejected", "input rows rejected", tag_keys=("source", "reason")
        ),
        "failed": Counter(
            f"{METRIC_PREFIX}files_failed",
            "input files that could not be read",
            tag_keys=("source",),
        ),
        "rate": Gauge(
            f"{METRIC_PREFIX}rows_per_second",
            "input rows per second of the last run",
            tag_keys=("source",),
        ),
    }


def record_rows(source: str, rows_in: int, rows_out: int, rejected: dict[str, int]) -> None:
    """Add row counts to the Ray counters (a no-op when Ray is not initialized).

    Args:
        source: the source tag.
        rows_in: rows read since the last call.
        rows_out: rows written since the last call.
        rejected: rows rejected since the last call, by reason.
    """
    if not ray.is_initialized():
        return
    inst, tags = _instruments(), {"source": source}
    if rows_in > 0:
        inst["read"].inc(rows_in, tags=tags)
    if rows_out > 0:
        inst["written"].inc(rows_out, tags=tags)
    for reason, count in rejected.items():
        if count > 0:
            inst["rejected"].inc(count, tags={"source": source, "reason": reason})


def record_run(source: str, files_failed: int, rows_per_second: float | None) -> None:
    """Record a finished run's failed files and rate (a no-op when Ray is not initialized).

    Args:
        source: the source tag.
        files_failed: input files that could not be read.
        rows_per_second: the run's input rows per second.
    """
    if not ray.is_initialized():
        return
    inst, tags = _instruments(), {"source": source}
    if files_failed:
        inst["failed"].inc(files_failed, tags=tags)
    if rows_per_second is not None:
        inst["rate"].set(rows_per_second, tags=tags)


def format_summary(manifest: dict) -> str:
    """Render a manifest's counts as a small text table.

    Args:
        manifest: from `manifest.build_manifest`.

    Returns:
        The table (several lines, no trailing newline).
    """
    lines = [
        f"convert {manifest['converter']} -> {manifest['source']}",
        f"  {'rows read':<32}{manifest['rows_in']:>10}",
        f"  {'rows written':<32}{manifest['rows_out']:>10}",
        f"  {'rows rejected':<32}{manifest['rows_rejected_total']:>10}",
    ]
    lines += [f"    {reason:<30}{n:>10}" for reason, n in manifest["rows_rejected"].items()]
    for reason, n in manifest["images_dropped"].items():
        lines.append(f"  {'images dropped: ' + reason:<32}{n:>10}")
    lines.append(f"  {'files skipped':<32}{len(manifest['files_skipped']):>10}")
    lines.append(f"  {'shards':<32}{len(manifest['shards']):>10}")
    lines.append(f"  {'wall seconds':<32}{manifest['seconds']:>10.2f}")
    lines.append(f"  {'rows/s':<32}{manifest['rows_per_second'] or 0.0:>10.1f}")
    return "\n".join(lines)
