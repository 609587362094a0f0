"""A converted shard directory's manifest and rejects file.

Layout of an output directory:
    manifest.json       written last: its presence means the directory is complete
    rejects.parquet     one row per rejected input row (REJECTS_SCHEMA)
    NNNNN-<stem>-pNNNN-NNNN.parquet   the shards (UNIFIED_SCHEMA)

Readers take the shard list from the manifest (`shard_paths`), not from a directory glob:
the glob would also match rejects.parquet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dreamray.data.schema import REJECTS_SCHEMA, SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.parquet"


def _input_entry(path: str, results: list, skipped: dict[str, str]) -> dict:
    mine = [r for r in results if r.path == path]
    entry = {
        "path": path,
        "bytes": Path(path).stat().st_size,
        "rows_in": sum(r.rows_in for r in mine),
        "rows_out": sum(r.rows_out for r in mine),
        "rows_rejected": sum(sum(r.rejected.values()) for r in mine),
        "status": "skipped" if path in skipped else "ok",
    }
    if path in skipped:
        entry["error"] = skipped[path]
    return entry


def build_manifest(
    *,
    source: str,
    converter: str,
    args: dict,
    inputs: list[str],
    results: list,
    seconds: float,
) -> dict:
    """Summarise a conversion run.

    Args:
        source: the source name.
        converter: the converter name.
        args: the run's arguments (JSON-able), recorded for provenance.
        inputs: every input file, in order.
        results: `writer.UnitResult`s; a failed one (error set) marks its file skipped.
        seconds: wall time of the run.

    Returns:
        The manifest dict (see `write_outputs`).
    """
    skipped = {r.path: r.error for r in results if r.error is not None}
    good = [r for r in results if r.path not in skipped]
    rejected = sum((r.rejected for r in good), Counter())
    dropped = sum((r.images_dropped for r in good), Counter())
    rows_in = sum(r.rows_in for r in good)
    ordered = sorted(good, key=lambda r: (inputs.index(r.path), r.part))
    shards = [s for r in ordered for s in r.shards]
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "converter": converter,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": args,
        "rows_in": rows_in,
        "rows_out": sum(r.rows_out for r in good),
        "rows_rejected": dict(sorted(rejected.items())),
        "rows_rejected_total": sum(rejected.values()),
        "images_dropped": dict(sorted(dropped.items())),
        "inputs": [_input_entry(p, results, skipped) for p in inputs],
        "files_skipped": [{"path": p, "error": e} for p, e in skipped.items()],
        "shards": shards,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
    }


def check_accounting(manifest: dict) -> None:
    """Check rows_in == rows_out + rows rejected, overall and per input file.

    Args:
        manifest: a manifest dict.

    Raises:
        AssertionError: naming the broken equation (a converter bug, never a data problem).
    """
    total = manifest["rows_out"] + sum(manifest["rows_rejected"].values())
    if manifest["rows_in"] != total:
        raise AssertionError(f"rows_in {manifest['rows_in']} != out + rejected {total}")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows_out"]:
        raise AssertionError("shard row counts do not add up to rows_out")
    for entry in manifest["inputs"]:
        if entry["rows_in"] != entry["rows_out"] + entry["rows_rejected"]:
            raise AssertionError(f"accounting broken for input {entry['path']}")


def write_outputs(out_dir: Path, manifest: dict, rejects: list[dict]) -> None:
    """Write rejects.parquet, then manifest.json (last: it marks the directory complete).

    Args:
        out_dir: the output directory (shards already in it).
        manifest: from `build_manifest`.
        rejects: dicts with REJECTS_SCHEMA's columns.
    """
    table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
    pq.write_table(table, out_dir / REJECTS_NAME)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(out_dir: str | Path) -> dict:
    """Read a converted directory's manifest.

    Args:
        out_dir: the directory.

    Returns:
        The manifest dict.

    Raises:
        FileNotFoundError: when the directory has no manifest (conversion missing or unfinished).
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not a complete converted dir")
    return json.loads(path.read_text())


def shard_paths(out_dir: str | Path) -> list[Path]:
    """The shard files of a converted directory, in manifest order.

    Args:
        out_dir: the directory.

    Returns:
        Absolute shard paths.

    Raises:
        FileNotFoundError: when the manifest is missing.
    """
    return [Path(out_dir).resolve() / s["path"] for s in read_manifest(out_dir)["shards"]]


def read_rejects(out_dir: str | Path) -> pa.Table:
    """Read a converted directory's rejects.

    Args:
        out_dir: the directory.

    Returns:
        The rejects table (REJECTS_SCHEMA).
    """
    return pq.read_table(Path(out_dir) / REJECTS_NAME, schema=REJECTS_SCHEMA)
