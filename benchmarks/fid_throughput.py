"""FID feature extraction + statistics: dreamray's actor pool vs clean-fid's single process.

    python benchmarks/fid_throughput.py --num-images 256 --num-actors 2 --protocol clean

Writes two folders of varied synthetic images, scores one against the other with clean-fid's
`compute_fid` (one process, `num_workers=0`) and with dreamray (in-process, and on a Ray actor
pool, cold = including actor start-up, warm = actors already up), same images and extractor,
and prints one table: images/s and the ratio to clean-fid. Also checks that the FIDs agree.
A second table (`--gen-images N`, 0 to skip) is text-to-image generation with the tiny zoo
DreamLLM (`evals/coco_gen.py`'s `ImageWorker`): in-process, and on an actor pool cold / warm.
A 1-CPU Ray actor runs one torch thread at niceness 15 (Ray's default for workers); the
single-process rows are also shown with one torch thread for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from cleanfid.fid import compute_fid

from dreamray.evals import tiny_feature_extractor
from dreamray.evals.features import PROTOCOLS, get_protocol, resize_center_crop
from dreamray.evals.fid_eval import FidSettings, folder_stats, score_folders, start_pool
from dreamray.evals.pool import PoolOptions, ensure_ray
from dreamray.evals.synthetic_images import write_varied_images
from dreamray.metrics.fid import fid_from_stats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=256, help="per folder")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--protocol", default="clean", choices=PROTOCOLS)
    p.add_argument("--seed", type=int, default=0, help="tiny extractor seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="keep the fastest of N runs per row")
    p.add_argument("--address", help="Ray cluster address (default: a new local cluster)")
    p.add_argument("--gen-images", type=int, default=32, help="generation table (0: skip)")
    p.add_argument("--gen-steps", type=int, default=4, help="denoising steps per image")
    p.add_argument("--gen-batch-size", type=int, default=4)
    return p.parse_args(argv)


def run_clean_fid(a: Path, b: Path, args: argparse.Namespace) -> tuple[float, float]:
    """clean-fid's compute_fid on the two folders: (seconds, fid)."""
    protocol = get_protocol(args.protocol)
    extra = (
        {"custom_image_tranform": resize_center_crop(protocol.pre_crop)}
        if protocol.pre_crop
        else {}
    )
    start = time.perf_counter()
    fid = compute_fid(
        str(a),
        str(b),
        mode=protocol.clean_fid_mode,
        custom_feat_extractor=tiny_feature_extractor(args.seed),
        device=torch.device("cpu"),
        num_workers=0,
        batch_size=args.batch_size,
        verbose=False,
        **extra,
    )
    return time.perf_counter() - start, float(fid)


def one_thread(run):
    """Run `run()` with one torch thread (what a 1-CPU Ray actor gets), then restore."""

    def wrapped() -> tuple[float, float]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run()
        finally:
            torch.set_num_threads(threads)

    return wrapped


def settings(args: argparse.Namespace, num_actors: int) -> FidSettings:
    """dreamray FID settings for one benchmark row."""
    return FidSettings(
        protocol=args.protocol,
        extractor=f"tiny:{args.seed}",
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        progress=False,
        pool=PoolOptions(num_actors=num_actors),
    )


def run_dreamray_cold(a: Path, b: Path, s: FidSettings) -> tuple[float, float]:
    """score_folders end to end (pool start-up included): (seconds, fid)."""
    start = time.perf_counter()
    fid = score_folders(a, s, ref_images=b)["fid"]
    return time.perf_counter() - start, fid


def run_dreamray_warm(a: Path, b: Path, s: FidSettings) -> tuple[float, float]:
    """Both folders' statistics on an already started pool: (seconds, fid)."""
    with start_pool(s) as pool:
        pool.wait_started()  # every actor has loaded its network
        start = time.perf_counter()
        stats_a = folder_stats(a, s, pool, "a").stats
        stats_b = folder_stats(b, s, pool, "b").stats
        seconds = time.perf_counter() - start
    return seconds, fid_from_stats(stats_a, stats_b)


def fastest(run, repeats: int) -> tuple[float, float]:
    """The fastest (seconds, fid) of `repeats` runs: the machine may be shared and noisy."""
    return min((run() for _ in range(max(repeats, 1))), key=lambda r: r[0])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    ensure_ray(args.address)
    with tempfile.TemporaryDirectory(prefix="fid-bench-") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        write_varied_images(a, args.num_images, seed=1)
        write_varied_images(b, args.num_images, seed=2, tint=(0.15, -0.05, 0.1))
        pooled = settings(args, args.num_actors)
        runs = [
            ("clean-fid compute_fid, 1 process", lambda: run_clean_fid(a, b, args)),
            ("clean-fid, 1 process, 1 torch thread", one_thread(lambda: run_clean_fid(a, b, args))),
            (
                "dreamray in-process, 1 torch thread",
                one_thread(lambda: run_dreamray_cold(a, b, settings(args, 0))),
            ),
            (f"dreamray pool x{args.num_actors}, cold", lambda: run_dreamray_cold(a, b, pooled)),
            (f"dreamray pool x{args.num_actors}, warm", lambda: run_dreamray_warm(a, b, pooled)),
        ]
        rows = [(name, *fastest(run, args.repeats)) for name, run in runs]
    code = print_table(rows, args)
    if args.gen_images > 0:
        from generation_throughput import generation_table

        generation_table(args)
    return code


def print_table(rows: list[tuple[str, float, float]], args: argparse.Namespace) -> int:
    """Print the table; exit code 1 when an FID differs from clean-fid's by 1e-6 or more."""
    total = 2 * args.num_images
    base = total / rows[0][1]
    print(
        f"\nFID throughput: {total} images ({args.num_images} per folder), protocol "
        f"{args.protocol}, extractor tiny:{args.seed}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads in the driver, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, best of {args.repeats} runs\n"
    )
    print(f"| {'method':<36} | {'seconds':>8} | {'images/s':>9} | {'ratio':>6} | {'FID':>12} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 11}|{'-' * 8}|{'-' * 14}|")
    for name, seconds, fid in rows:
        rate = total / seconds
        print(f"| {name:<36} | {seconds:8.2f} | {rate:9.1f} | {rate / base:5.2f}x | {fid:12.6f} |")
    worst = max(abs(fid - rows[0][2]) / abs(rows[0][2]) for _, _, fid in rows)
    print(f"\nlargest relative FID difference to clean-fid: {worst:.2e}")
    return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
