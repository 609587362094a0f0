"""Compare a converted shard directory with a synthetic source's truth file."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from dreamray.data.manifest import check_accounting, read_manifest, read_rejects, shard_paths
from dreamray.data.synthetic.common import sha256


def _row_problems(rid: str, row: dict, want: dict) -> list[str]:
    got = {
        "kind": row["kind"],
        "texts": row["texts"],
        "roles": row["roles"],
        "instruction": row["instruction"],
        "image_after": row["image_after"],
        "image_sha256": [sha256(b) for b in row["images"]],
    }
    return [
        f"{rid}: {key} differs: {got[key]!r} != {want[key]!r}"
        for key in got
        if got[key] != want[key]
    ]


def compare_with_truth(shard_dir: str | Path, truth: dict) -> list[str]:
    """List every difference between a converted directory and the truth.

    Checked: accounting; every good row present once with identical texts, roles, instruction,
    image order and image bytes (by sha256); every planted bad row in the rejects with the
    expected reason; every bad file recorded as skipped; nothing else anywhere.

    Args:
        shard_dir: the converter's output directory.
        truth: from `read_truth`.

    Returns:
        Human-readable problems (empty when the conversion is exactly right).
    """
    manifest = read_manifest(shard_dir)
    check_accounting(manifest)
    problems: list[str] = []
    rows = [r for p in shard_paths(shard_dir) for r in pq.read_table(p).to_pylist()]
    ids = [r["id"] for r in rows]
    if len(ids) != len(set(ids)):
        problems.append("duplicate ids in shards")
    extra = sorted(set(ids) - set(truth["rows"]))
    missing = sorted(set(truth["rows"]) - set(ids))
    problems += [f"unexpected row {i}" for i in extra] + [f"missing row {i}" for i in missing]
    for row in rows:
        if row["id"] in truth["rows"]:
            problems += _row_problems(row["id"], row, truth["rows"][row["id"]])
    rejects = {r["id"]: r["reason"] for r in read_rejects(shard_dir).to_pylist()}
    if rejects != truth["rejects"]:
        for rid in sorted(set(rejects) | set(truth["rejects"])):
            got, want = rejects.get(rid), truth["rejects"].get(rid)
            if got != want:
                problems.append(f"reject {rid}: got {got}, want {want}")
    skipped = sorted(Path(f["path"]).name for f in manifest["files_skipped"])
    if skipped != sorted(truth["bad_files"]):
        problems.append(f"skipped files {skipped} != {sorted(truth['bad_files'])}")
    return problems
