"""Converter fan-out: 4 input files converted in parallel (one Ray task each, all in flight)
vs one file at a time (one task in flight), in the same run, on the same warm local cluster.

Inputs are img2dataset parquet shards of photo-like ~512 px JPEGs, so the full decode check of
every image dominates the conversion. Prints one table (median of --repeats runs).

    .venv/bin/python benchmarks/convert_parallel.py [--num-cpus 4] [--rows-per-file 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from dreamray.data.convert import ConvertRequest, ReadContext, ensure_ray, run_conversion
from dreamray.data.synthetic.images import realistic_jpeg

FILES = 4


def write_inputs(root: Path, rows_per_file: int, side: int, seed: int) -> list[Path]:
    """Write FILES img2dataset-style parquet shards of realistic JPEGs."""
    rng, paths = np.random.default_rng(seed), []
    for f in range(FILES):
        rows = [
            {
                "key": f"{f:05d}{i:04d}",
                "jpg": realistic_jpeg(rng, side),
                "txt": f"a photo number {i}",
                "status": "success",
            }
            for i in range(rows_per_file)
        ]
        paths.append(root / f"{f:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows), paths[-1], row_group_size=32)
    return paths


def convert_once(inputs: list[Path], out: Path, max_parallel: int | None) -> float:
    """Convert the inputs; return wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    req = ConvertRequest(
        "img2dataset",
        inputs,
        out,
        ReadContext(source="laion400m"),
        max_parallel=max_parallel,
        progress=False,
    )
    start = time.perf_counter()
    manifest = run_conversion(req)
    seconds = time.perf_counter() - start
    assert manifest["rows_out"] == manifest["rows_in"], manifest["rows_rejected"]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=min(FILES, os.cpu_count() or 1))
    parser.add_argument("--rows-per-file", type=int, default=120)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convert_parallel_") as tmp:
        root = Path(tmp)
        inputs = write_inputs(root, args.rows_per_file, args.side, args.seed)
        mib = sum(p.stat().st_size for p in inputs) / 2**20
        ensure_ray(args.num_cpus)
        convert_once(inputs, root / "out", None)  # warm-up: starts the workers
        times = {"one file at a time": [], "4 files in parallel": []}
        for _ in range(args.repeats):  # interleaved, so load drift hits both modes alike
            times["one file at a time"].append(convert_once(inputs, root / "out", 1))
            times["4 files in parallel"].append(convert_once(inputs, root / "out", None))
        rows = FILES * args.rows_per_file
        seq = statistics.median(times["one file at a time"])
        print(
            f"\n{FILES} files x {args.rows_per_file} rows, {args.side} px JPEG, {mib:.1f} MiB; "
            f"Ray num_cpus={int(ray.cluster_resources()['CPU'])}, machine cores "
            f"{os.cpu_count()} (1-min load avg {os.getloadavg()[0]:.1f}), "
            f"median of {args.repeats}"
        )
        print(f"| {'mode':<22} | {'wall s':>7} | {'rows/s':>7} | {'speed-up':>8} |")
        print(f"|{'-' * 24}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
        for mode, values in times.items():
            wall = statistics.median(values)
            print(f"| {mode:<22} | {wall:>7.2f} | {rows / wall:>7.1f} | {seq / wall:>7.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
