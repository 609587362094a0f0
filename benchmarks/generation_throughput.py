"""Text-to-image generation throughput of the tiny zoo DreamLLM (the COCO FID generation half).

Used by `fid_throughput.py` (its second table), or alone:

    python benchmarks/generation_throughput.py --gen-images 32 --num-actors 2

Rows: `ImageWorker.generate` in-process with one torch thread (what a 1-CPU actor gets), and
`generate_missing` on an actor pool, cold (actor start-up and model load included) and warm
(actors already up). Each row writes its PNGs and records like a real run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamray.evals.captions import CaptionItem, CaptionManifest
from dreamray.evals.coco_gen import ImageWorker, SamplerSettings, generate_missing, work_items
from dreamray.evals.pool import ActorPool, PoolOptions, ensure_ray
from dreamray.evals.results import ResultsStore

WORDS = ["dog", "cat", "red bus", "kite", "pizza", "boat", "train", "horse"]


def write_tiny_artifact(root: Path) -> Path:
    """Build the tiny zoo and save a fresh tiny DreamLLM (8 dream queries) as an artifact."""
    from dreamray.config.specs import ModelSpec
    from dreamray.model.build import build_dreamllm
    from dreamray.zoo import build_tiny_zoo

    zoo = build_tiny_zoo(root / "zoo", seed=0)
    spec = ModelSpec(
        llm_path=str(zoo.llm),
        vision_path=str(zoo.vision),
        diffusion_path=str(zoo.diffusion),
        num_dream_queries=8,
        max_length=256,
        gradient_checkpointing=False,
    )
    torch.manual_seed(0)
    return build_dreamllm(spec).save_pretrained(root / "artifact")


def items_for(n: int, out: Path) -> list[dict]:
    """`n` work items (one seed) writing under `out`."""
    captions = [
        CaptionItem(f"coco{i}", i, f"{i}.jpg", f"a {WORDS[i % 8]} number {i}") for i in range(n)
    ]
    return work_items(CaptionManifest(captions, {}), [0], out)


def in_process(artifact: Path, sampler: SamplerSettings, n: int, out: Path) -> float:
    """Seconds for `ImageWorker.generate` on n items in this process, one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = ImageWorker(str(artifact), sampler)
        start = time.perf_counter()
        worker.generate(items_for(n, out))
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def pooled(artifact: Path, sampler: SamplerSettings, n: int, out: Path, actors: int) -> tuple:
    """(cold seconds, warm seconds) of `generate_missing` on an `actors`-actor pool."""
    options = PoolOptions(num_actors=actors)
    start = time.perf_counter()
    with ActorPool(ImageWorker, options, str(artifact), sampler) as pool:
        generate_missing(
            items_for(n, out / "cold"), ResultsStore(out / "cold.jsonl"), pool, 4, False
        )
        cold = time.perf_counter() - start
        start = time.perf_counter()
        generate_missing(
            items_for(n, out / "warm"), ResultsStore(out / "warm.jsonl"), pool, 4, False
        )
        warm = time.perf_counter() - start
    return cold, warm


def generation_table(args: argparse.Namespace) -> None:
    """Measure and print the generation table (`args.gen_images`, `gen_steps`, ...)."""
    ensure_ray(args.address)
    sampler = SamplerSettings(args.gen_steps, 2.0, "ddpm", args.gen_batch_size)
    n = args.gen_images
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as tmp:
        root = Path(tmp)
        artifact = write_tiny_artifact(root)
        rows = [
            ("ImageWorker in-process, 1 torch thread", in_process(artifact, sampler, n, root / "a"))
        ]
        cold, warm = pooled(artifact, sampler, n, root / "p", args.num_actors)
        rows += [(f"generation pool x{args.num_actors}, cold", cold)]
        rows += [(f"generation pool x{args.num_actors}, warm", warm)]
    print(
        f"\nGeneration throughput: {n} images of the tiny DreamLLM (16 px, {args.gen_steps} DDPM "
        f"steps, guidance 2.0, batch {args.gen_batch_size}), {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print(f"| {'method':<40} | {'seconds':>8} | {'images/s':>9} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 11}|")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:8.2f} | {n / seconds:9.1f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the generation table alone."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gen-images", type=int, default=32)
    p.add_argument("--gen-steps", type=int, default=4)
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--address", help="Ray cluster address (default: a new local cluster)")
    generation_table(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
