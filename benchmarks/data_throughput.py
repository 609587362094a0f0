"""Throughput of the training data pipeline vs a plain single-process loop doing the same work.

Both read the same shards (realistic ~512 px JPEGs, generated here: decoding dominates) and do
the same work per sample: parquet read, tokenise + build the sequence, decode, CLIP processor,
SD resize/crop, collate. The pipeline is what a train worker of a 1-worker stage reads
(`orchestration.train_data.build_rank_dataset`: the stage's chunks as a dataset, `map_batches`
building them) on a local Ray cluster of
`--cpus` CPUs, consumed by one `iter_train_batches` loop in the driver; it runs twice and the
second (warm: worker processes already imported torch) run is the one compared. A third row
splits the plain loop over `--cpus` processes with no Ray at all: the ceiling these cores give
to perfectly parallel work, against which the pipeline's own cost can be read.

    python benchmarks/data_throughput.py [--samples 1536] [--cpus 2] [--work-dir .cache/bench]

Prints one table: samples/s, images/s, speed-up and speed-up per CPU (wall clock, best of N
interleaved runs), and the CPU time per sample of each (this process and all its children: Ray's
raylet, GCS and workers included), which does not depend on what else runs on the machine.
Below it, how many map tasks were busy on average in each Ray run (the sum of the tasks' own
wall times, from Ray Data's stats, over the run's wall time): at most `--cpus`.

The default 1536 planned samples (~1700 with the plan's surplus) make a run long enough that
the pipeline's fill (the first task's ~2 s) and tail are a small part of it, as in training.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def realistic_jpeg(rng: np.random.Generator) -> bytes:
    """A ~512 px photo-like JPEG: smooth gradients, shapes and sensor-like noise."""
    w, h = int(rng.integers(480, 640)), int(rng.integers(400, 560))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    image = Image.fromarray((base * rng.uniform(0.3, 1.0, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 8, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: Path, rows_per_source: int, seed: int) -> dict[str, Path]:
    """A pair source (1 image per row) and a document source (3 images per row)."""
    from dreamray.data.schema import rows_to_table

    rng = np.random.default_rng(seed)
    words = "a dog cat on the red table near blue sky water city street field".split()
    say = lambda n: " ".join(rng.choice(words, n)) + "."  # noqa: E731
    paths = {}
    for name, kind in (("pairs", "pair"), ("docs", "document")):
        rows = []
        for i in range(rows_per_source):
            texts = [say(12)] if kind == "pair" else [say(20) for _ in range(5)]
            after = [0] if kind == "pair" else [0, 2, 4]
            rows.append(
                {
                    "id": f"{name}/0/{i}",
                    "source": name,
                    "kind": kind,
                    "texts": texts,
                    "roles": [],
                    "instruction": None,
                    "image_sim": None,
                    "images": [realistic_jpeg(rng) for _ in after],
                    "image_after": after,
                }
            )
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(rows_to_table(rows), root / name / "part-0.parquet", row_group_size=16)
        paths[name] = root / name
    return paths


def make_stage(work: Path, samples: int, seed: int):
    """The benchmark stage: tiny tokenizer, real CLIP-L/14 (224) and SD 2.1 (512) transforms."""
    from dreamray.config.specs import TrainStageSpec
    from dreamray.zoo import build_real_configs, build_tiny_zoo

    tiny, real = build_tiny_zoo(work / "zoo"), build_real_configs(work / "real")
    shards = write_shards(work / "shards", samples // 4, seed)
    sources = [{"name": n, "path": str(p), "weight": 1.0} for n, p in shards.items()]
    return TrainStageSpec.model_validate(
        {
            "model": {
                "llm_path": str(tiny.llm),
                "vision_path": str(real.vision),
                "diffusion_path": str(real.diffusion),
            },
            "trainable": ["llm"],
            "data": {"sources": sources, "mode": "joint", "num_samples": samples, "seed": seed},
            "optim": {"lr": 1.0e-5},
            "loss": {"lm": 1.0, "vm": 1.0},
            "deepspeed": {"global_batch_size": 4, "micro_batch_per_gpu": 4},
        }
    )


def cpu_seconds() -> float:
    """CPU time of this process and all its descendants (the local Ray cluster's raylet, GCS
    and workers are children of the driver): the work done, whatever the machine's load."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measured(run):
    """Wrap a run: (samples, images, wall seconds, CPU seconds, *whatever else it returns)."""

    def wrapper(*args):
        cpu = cpu_seconds()
        samples, images, wall, *extra = run(*args)
        return samples, images, wall, cpu_seconds() - cpu, *extra

    return wrapper


def _plain_run(stage, micro: int, part: int = 0, parts: int = 1, start_at: float = 0.0):
    """The plain loop over every `parts`-th chunk from `part`: (samples, images, start, end).

    The builder and transforms are loaded first (as in Ray's warm run); the clock starts at
    `start_at` (wall clock), or right after loading when it is 0.
    """
    from dreamray.data.batches import make_collate_spec
    from dreamray.data.collate import collate
    from dreamray.data.pipeline import (
        DEFAULT_CHUNK_SIZE,
        StagePlan,
        _worker,
        build_record,
        index_sources,
    )

    torch_threads_one()
    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None,
                     DEFAULT_CHUNK_SIZE)
    spec = make_collate_spec(stage, stage.model.llm_path)
    builder, transforms = _worker(plan)
    time.sleep(max(0.0, start_at - time.time()))
    start, samples, images, batch = time.time(), 0, 0, []
    for chunk in range(part, plan.num_chunks, parts):
        for position, source, row in plan.rows(chunk):
            record = build_record(builder, transforms, position, source, row)
            if not record["skip_reason"]:
                batch.append(record)
            if len(batch) == micro:
                out = collate(batch, spec)
                samples += micro
                images += len(out["clip_pixel_values"]) + len(out["sd_pixel_values"])
                batch = []
    return samples, images, start, time.time()


def torch_threads_one() -> None:
    """One torch thread, as in a Ray task or a 1-CPU train worker (Ray sets OMP_NUM_THREADS):
    the CLIP processor (torchvision) and the collator would otherwise spread over every core,
    and on a loaded machine OpenMP threads spin: 4-5x the CPU for the same work."""
    import torch

    torch.set_num_threads(1)


@measured
def plain_loop(stage, micro: int) -> tuple[int, int, float]:
    """The same work in one process, no Ray: (samples, images, seconds)."""
    samples, images, start, end = _plain_run(stage, micro)
    return samples, images, end - start


def plain_processes(stage, micro: int, processes: int) -> tuple[int, int, float, float]:
    """The plain loop split over `processes` processes (chunk c to process c mod n), no Ray:
    what the cores give to perfectly parallel work with no framework at all. CPU time is
    reported as NaN (the pool's processes are gone before it could be read)."""
    import multiprocessing as mp

    start_at = time.time() + 15.0  # every process has loaded its tokenizer and transforms
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.starmap(
            _plain_run, [(stage, micro, i, processes, start_at) for i in range(processes)]
        )
    wall = max(p[3] for p in parts) - start_at
    return sum(p[0] for p in parts), sum(p[1] for p in parts), wall, float("nan")


def map_task_seconds(stats: str) -> float:
    """Sum of the map tasks' wall times in a Ray Data stats text (NaN if not found)."""
    found = re.search(r"MapBatches\(build_chunks\)[^\n]*\n\* Remote wall time: .*?([\d.]+)s total",
                      stats)
    return float(found.group(1)) if found else float("nan")


@measured
def ray_pipeline(stage, micro: int) -> tuple[int, int, float, float]:
    """The pipeline, one consumer in the driver: (samples, images, seconds, mean number of map
    tasks running)."""
    from dreamray.data.batches import iter_train_batches, make_collate_spec
    from dreamray.orchestration.train_data import build_rank_dataset

    spec = make_collate_spec(stage, stage.model.llm_path)
    iterator = build_rank_dataset(stage, stage.model.llm_path, 0, 1).iterator()
    start, samples, images = time.perf_counter(), 0, 0
    for _, info in iter_train_batches(iterator, spec, micro, None, None):
        samples += len(info.positions)
        images += info.num_clip_images + info.num_sd_images
    wall = time.perf_counter() - start
    return samples, images, wall, map_task_seconds(iterator.stats()) / wall


def _row(name: str, result: tuple, base: tuple, cpus: int) -> str:
    n, images, wall, cpu = result[:4]
    speedup = (n / wall) / (base[0] / base[2])
    cpu_ratio = (base[3] / base[0]) / (cpu / n)  # plain CPU-s per sample / this one's
    return (
        f"{name:<28}{n:>8}{n / wall:>11.1f}{images / wall:>10.1f}{speedup:>9.2f}"
        f"{speedup / cpus:>7.2f}{1000 * cpu / n:>11.1f}{cpus * cpu_ratio:>12.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run both (interleaved, best of `--repeats`), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/bench/data_throughput"))
    args = parser.parse_args(argv)
    import ray

    torch_threads_one()
    stage = make_stage(args.work_dir, args.samples, seed=0)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
    cold = ray_pipeline(stage, args.micro)
    plains, rays, ceilings = [], [], []
    # interleaved, best of N: the machine is shared, and load changes minute to minute
    for _ in range(args.repeats):
        plains.append(plain_loop(stage, args.micro))
        ceilings.append(plain_processes(stage, args.micro, args.cpus))
        rays.append(ray_pipeline(stage, args.micro))
    best = lambda runs: min(runs, key=lambda r: r[2] / r[0])  # noqa: E731
    worst = lambda runs: max(runs, key=lambda r: r[2] / r[0])  # noqa: E731
    plain = best(plains)
    print(
        f"\n{'run':<28}{'samples':>8}{'samples/s':>11}{'images/s':>10}{'x plain':>9}"
        f"{'x/cpu':>7}{'cpu ms/smp':>11}{'x idle est':>12}"
    )
    print(_row("plain loop, 1 process", plain, plain, args.cpus))
    print(_row(f"plain loop, {args.cpus} processes", best(ceilings), plain, args.cpus))
    print(_row("ray pipeline, cold start", cold, plain, args.cpus))
    print(_row(f"ray pipeline, warm (best {args.repeats})", best(rays), plain, args.cpus))
    print(_row("ray pipeline, warm (worst)", worst(rays), plain, args.cpus))
    print(
        f"plain loop, {args.cpus} processes: the same loop split over {args.cpus} processes "
        "(no Ray): what these cores give to perfectly parallel work (CPU time not read)"
    )
    print(
        "x idle est: speed-up expected on idle CPUs = cpus x plain CPU per sample / this "
        "run's CPU per sample (Ray's raylet, GCS and driver included)"
    )
    print(
        f"(ray cluster: {args.cpus} CPUs; plain runs samples/s: "
        f"{[round(r[0] / r[2], 1) for r in plains]}; {args.cpus}-process runs: "
        f"{[round(r[0] / r[2], 1) for r in ceilings]}; ray runs samples/s: "
        f"{[round(r[0] / r[2], 1) for r in rays]}; map tasks busy on average, runs in order "
        f"(cold first): {[round(r[4], 2) for r in (cold, *rays)]}; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
