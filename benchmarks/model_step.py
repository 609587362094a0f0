"""DreamLLM training step vs the bare HF causal LM it wraps, on the same tokens, in the same run.

Both run forward + backward (no optimizer step) on one batch of B sequences, each holding an
IMG block and a DRM block (Q dream queries) between text. The bare LLM sees the same token ids as
plain tokens, with every parameter trainable; the DreamLLM has the stage-II trainable groups, and
additionally runs CLIP, the VAE and the UNet. Prints one table: median and p90 ms per step, and
the ratio to the bare LLM.

    .venv/bin/python benchmarks/model_step.py [--zoo DIR] [--batch 4] [--steps 20] [--queries 64]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dreamray.config.specs import ModelSpec
from dreamray.model.build import build_dreamllm
from dreamray.model.groups import freeze_all_but
from dreamray.model.tokens import IGNORE_INDEX
from dreamray.zoo import build_tiny_zoo

STAGE2 = [
    "llm",
    "embed_tokens",
    "lm_head",
    "vision_projector",
    "dream_queries",
    "condition_projector",
]


def make_batch(model, batch: int) -> dict[str, torch.Tensor]:
    """B identical-layout rows: ``<s> text IMG text DRM IMG text </s>`` (1 dream, 2 images each)."""
    tok, t = model.tokenizer, model.token_ids
    text = tok("a small red boat near the beach under a blue sky", add_special_tokens=False)
    words = text.input_ids
    img, drm = t.image_block(model.num_patches), t.dream_block(model.num_queries)
    row = [t.bos, *words, *img, *words, *drm, *img, *words, t.eos]
    input_ids = torch.tensor([row] * batch)
    labels = input_ids.clone()
    for tid in t.unsupervised_ids():
        labels[labels == tid] = IGNORE_INDEX
    clip, res = model.clip_vision_embedding.image_size, model.stable_diffusion_head.resolution
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "clip_pixel_values": torch.randn(2 * batch, 3, clip, clip),
        "sd_pixel_values": torch.rand(batch, 3, res, res) * 2 - 1,
    }


def time_interleaved(
    steps: dict[str, tuple[Callable[[], torch.Tensor], list]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per forward + backward of each step, alternating them so load drift hits all alike.

    Args:
        steps: ``{name: (loss function, parameters whose grads to clear)}``.
        warmup: untimed rounds first.
        repeats: timed rounds.

    Returns:
        ``{name: [seconds, ...]}``.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, (step, params) in steps.items():
            for p in params:
                p.grad = None
            start = time.perf_counter()
            step().backward()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def measure(zoo, batch: int, queries: int, warmup: int, repeats: int) -> tuple[dict, int]:
    """Time the bare LLM and the DreamLLM on the same batch.

    Returns:
        ``({row name: seconds per step}, sequence length)``.
    """
    spec = ModelSpec(
        llm_path=str(zoo.llm),
        vision_path=str(zoo.vision),
        diffusion_path=str(zoo.diffusion),
        num_dream_queries=queries,
        max_length=512,
        gradient_checkpointing=False,
    )
    torch.manual_seed(0)
    model = build_dreamllm(spec)
    freeze_all_but(model, STAGE2)
    model.train()
    bare = copy.deepcopy(model.llm).train()  # same size, same resized vocab
    bare.requires_grad_(True)
    b = make_batch(model, batch)

    def bare_step() -> torch.Tensor:
        return bare(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]
        ).loss

    def dream_step() -> torch.Tensor:
        return model(**b, lm_weight=1.0, vm_weight=10.0).loss

    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_by_name = {
        "bare HF causal LM": (bare_step, list(bare.parameters())),
        "DreamLLM (stage II groups)": (dream_step, trainable),
    }
    results = time_interleaved(steps_by_name, warmup, repeats)
    return results, b["input_ids"].shape[1]


def print_table(results: dict[str, list[float]], batch: int, seq_len: int) -> None:
    """One table: median / p90 ms per step and the ratio of medians to the first row."""
    base = statistics.median(next(iter(results.values())))
    print(f"\nforward+backward per step, batch {batch} x {seq_len} tokens, 1 CPU thread")
    print(f"{'model':<28} {'median ms':>10} {'p90 ms':>9} {'ratio':>7}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{name:<28} {med * 1e3:>10.1f} {p90 * 1e3:>9.1f} {med / base:>7.2f}")


def main() -> int:
    """Parse arguments, build (or reuse) the tiny zoo, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", type=Path, default=None, help="tiny zoo dir (default: a temp dir)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the CPUs here are shared: one thread is the stable choice
    with tempfile.TemporaryDirectory() as tmp:
        zoo = build_tiny_zoo(args.zoo or Path(tmp) / "zoo")
        results, seq_len = measure(zoo, args.batch, args.queries, args.warmup, args.steps)
    print_table(results, args.batch, seq_len)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
