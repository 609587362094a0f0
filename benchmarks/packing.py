"""Sequence packing: real (non-pad) tokens/s of stage-II training steps, packed vs unpacked.

Both modes run forward + backward of the same DreamLLM (stage-II trainable groups, joint mode,
loss weights (1, 10)) over the same optimizer steps of the same samples, alternating per step
so that load drift hits both alike. A step is `--accum` micro-batches of `--micro` samples, cut
by the real batcher (`dreamray.data.batches.iter_train_batches`): unpacked, each micro-batch is
padded to its longest sample; packed (`data.packing: true`), the step's samples are packed into
rows of at most max_length and the rows dealt to the step's micro-batches
(`dreamray.data.packing`). The default step is 16 x 8 = 128 samples per rank. What a rank packs
in the real recipe depends on the GPU count: dreamllm_7b.yaml's global batch 2048 in
micro-batches of 16 is 16 samples per rank on its 128 GPUs (accumulation 1), 256 on 8 GPUs
(accumulation 16). A second line gives the packed padding for those pool sizes, from the same
documents' lengths.

Samples: MMC4-like documents with the sequence builder's layout and truncation rules
(``<s> text [DRM IMG] text ... </s>``: text may be cut, a block never is): 1-6 images per
document with P(k) ~ 1/k (most documents have few images, some many), text tokens log-normal
(long-tailed: sigma 1.0, median 384 tokens at the real scale) spread over the gaps between the
images. The real recipe's lengths (max_length 2048, IMG 258 and DRM 66 tokens) are scaled by
the tiny zoo's IMG block (16 patches + 2 = 18 tokens) / 258, so blocks, text and max_length keep
their real proportions.

The LLM: in the real recipe the 7B LLM is most of a step's cost, so the default LLM here is
wider than the tiny zoo's (width 256, 4 layers; `--llm-width 64 --llm-layers 2` is the zoo's
own), with the zoo's CLIP, VAE and UNet. The table reports the padding fraction of both modes.
Last line: ``ratio: <packed real tokens/s / unpacked real tokens/s>`` (target >= 1.5, packed
padding <= 5 %).

    .venv/bin/python benchmarks/packing.py [--micro 8] [--accum 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dreamray.config.specs import ModelSpec
from dreamray.data.batches import iter_train_batches
from dreamray.data.collate import POSITION_IDS, CollateSpec
from dreamray.data.packing import pack_rows
from dreamray.data.records import make_record, records_table
from dreamray.data.sequence import SequenceLayout
from dreamray.data.transforms import ImageTransforms
from dreamray.model.build import build_dreamllm
from dreamray.model.groups import freeze_all_but
from dreamray.model.losses import lm_loss_sum
from dreamray.model.packed_attention import run_packed_llm
from dreamray.model.tokens import IGNORE_INDEX
from dreamray.zoo import build_tiny_zoo
from dreamray.zoo_llm import build_tokenizer, tiny_llm_config

STAGE2 = ["llm", "embed_tokens", "lm_head", "vision_projector", "dream_queries",
          "condition_projector"]
REAL_MAX_LENGTH = 2048
REAL_QUERIES = 64
REAL_PATCHES = 256  # CLIP ViT-L/14 at 224 px
REAL_TEXT = 384  # median text tokens of a document at the real scale
# accumulation steps of the padding-only line; 8 x 32 = 256 samples: the real step on one rank
POOL_ACCUMS = (1, 2, 4, 8, 16, 32)
LLM_ONLY = " (LLM only)"  # accumulation steps of the padding-only table
MAX_IMAGES = 6


@dataclass
class ModeStats:
    """What one mode did over the timed batches."""

    seconds: list[float]
    real_tokens: int
    slots: int  # rows x width, summed over batches
    rows: int


def wide_llm(out: Path, width: int, layers: int) -> Path:
    """A Llama of the given width and depth with the tiny zoo's tokenizer (random weights)."""
    from transformers import LlamaForCausalLM

    tok = build_tokenizer(out)
    config = tiny_llm_config(tok)
    config.hidden_size, config.intermediate_size = width, 8 * width // 3
    config.num_hidden_layers = layers
    config.num_attention_heads = config.num_key_value_heads = max(1, width // 64)
    config.head_dim = width // config.num_attention_heads
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def document_ids(model, rng: random.Random, max_length: int, text_median: float):
    """One MMC4-like document: (input_ids, labels, number of images kept)."""
    t = model.token_ids
    images = rng.choices(range(1, MAX_IMAGES + 1), weights=[1 / k for k in range(1, 7)])[0]
    text = max(1, int(rng.lognormvariate(math.log(text_median), 1.0)))
    cuts = sorted(rng.randint(0, text) for _ in range(images))
    gaps = [b - a for a, b in zip([0, *cuts], [*cuts, text], strict=True)]
    block = [*t.dream_block(model.num_queries), *t.image_block(model.num_patches)]
    block_labels = [IGNORE_INDEX] * len(block)
    block_labels[0] = t.dream_start  # documents supervise <dream_start>, not the slots
    ids, labels, kept = [t.bos], [IGNORE_INDEX], 0
    budget = max_length - 1  # </s>
    for k, gap in enumerate(gaps):
        words = [rng.randrange(10, 200) for _ in range(gap)][: budget - len(ids)]
        ids, labels = ids + words, labels + words
        if k == images or len(ids) + len(block) > budget:
            break
        ids, labels, kept = ids + block, labels + block_labels, kept + 1
    return [*ids, t.eos], [*labels, t.eos], kept


def make_records(model, count: int, scale, clip_shape, sd_size) -> list[dict]:
    """`count` collate-ready records of MMC4-like documents with random pixels."""
    rng, pixels = random.Random(0), np.random.default_rng(0)
    records = []
    for i in range(count):
        ids, labels, kept = document_ids(model, rng, scale.max_length, scale.text_median)
        clip = pixels.integers(0, 255, (kept, *clip_shape), dtype=np.uint8)
        sd = pixels.integers(0, 255, (kept, 3, sd_size, sd_size), dtype=np.uint8)
        records.append(make_record(i, f"mmc4/{i}", "mmc4", ids, labels, clip, sd, 0))
    return records


@dataclass(frozen=True)
class Scale:
    """The real recipe's lengths scaled onto the tiny zoo (see the module docstring)."""

    max_length: int
    queries: int
    text_median: float

    @classmethod
    def from_patches(cls, num_patches: int) -> Scale:
        """Scale = the zoo's IMG block / the real one (258 tokens)."""
        s = (num_patches + 2) / (REAL_PATCHES + 2)
        return cls(round(REAL_MAX_LENGTH * s), max(1, round(REAL_QUERIES * s)), REAL_TEXT * s)


class _Shard:
    """One Arrow block of records, as a worker's dataset shard hands it out."""

    def __init__(self, records: list[dict]):
        self.table = records_table(records)

    def iter_batches(self, **_kwargs):
        yield self.table


def step_batches(records, spec: CollateSpec, micro: int, accum: int) -> list[list[dict]]:
    """The optimizer steps' micro-batches, cut by the real batcher."""
    it = iter_train_batches(_Shard(records), spec, micro, None, None, pack_pool=accum)
    batches = [batch for batch, _ in it]
    return [batches[k : k + accum] for k in range(0, len(batches), accum)]


def full_step(model, batch: dict) -> float:
    """Seconds of the DreamLLM's forward + backward on one micro-batch."""
    start = time.perf_counter()
    model(**batch, lm_weight=1.0, vm_weight=10.0).loss.backward()
    return time.perf_counter() - start


def llm_step(model, batch: dict) -> float:
    """Seconds of the LLM's part alone (its forward, the LM loss, their backward) on one
    micro-batch: what packing changes, without the per-image towers it does not."""
    with torch.no_grad():
        pixels = batch["clip_pixel_values"]
        embeds = model.embed(batch["input_ids"], pixels if pixels.shape[0] else None)
    embeds.requires_grad_(True)
    start = time.perf_counter()
    if POSITION_IDS in batch:
        logits, _ = run_packed_llm(model, embeds, batch[POSITION_IDS])
    else:
        logits = model.run_llm(embeds, batch["attention_mask"])[0].logits
    lm_loss_sum(logits, batch["labels"])[0].backward()
    return time.perf_counter() - start


def measure(model, steps: dict[str, list[list[dict]]], warmup: int) -> dict[str, ModeStats]:
    """Time every micro-batch of every step, full and LLM-only, alternating the modes per
    step; the first `warmup` steps are not counted."""
    stats = {f"{mode}{part}": ModeStats([], 0, 0, 0) for part in ("", LLM_ONLY) for mode in steps}
    trainable = [p for p in model.parameters() if p.requires_grad]
    for i in range(len(next(iter(steps.values())))):
        for part, timer in (("", full_step), (LLM_ONLY, llm_step)):
            for mode, mode_steps in steps.items():
                for p in trainable:
                    p.grad = None
                seconds = sum(timer(model, batch) for batch in mode_steps[i])
                if i < warmup:
                    continue
                s = stats[mode + part]
                s.seconds.append(seconds)
                s.real_tokens += sum(int(b["attention_mask"].sum()) for b in mode_steps[i])
                s.slots += sum(b["input_ids"].numel() for b in mode_steps[i])
                s.rows += sum(b["input_ids"].shape[0] for b in mode_steps[i])
    return stats


def build(args, tmp: Path):
    """The model, its scale and the two collate specs (unpacked, packed)."""
    zoo = build_tiny_zoo(args.zoo or tmp / "zoo")
    llm = zoo.llm
    if (args.llm_width, args.llm_layers) != (64, 2):
        llm = wide_llm(tmp / "llm", args.llm_width, args.llm_layers)
    transforms = ImageTransforms(zoo.vision, zoo.diffusion, False, 0)
    scale = Scale.from_patches(SequenceLayout.from_model(zoo.vision, 1, 16).num_patches)
    spec = ModelSpec(llm_path=str(llm), vision_path=str(zoo.vision),
                     diffusion_path=str(zoo.diffusion), num_dream_queries=scale.queries,
                     max_length=scale.max_length, gradient_checkpointing=False)
    torch.manual_seed(0)
    model = build_dreamllm(spec)
    freeze_all_but(model, STAGE2)
    model.train()
    rescale, mean, std = transforms.clip_normalization()
    plain = CollateSpec(model.tokenizer.pad_token_id, transforms.clip_shape, transforms.sd_size,
                        rescale, mean, std)
    packed = CollateSpec(**{**plain.__dict__, "pack_length": scale.max_length})
    return model, scale, (plain, packed), transforms


def paired_ratio(stats: dict[str, ModeStats], part: str = "") -> float:
    """Median over steps of unpacked time / packed time: both modes train the same samples in a
    step, so this is the real-token rate ratio of that step, and the median resists the load
    spikes of a shared machine."""
    pairs = zip(stats[f"unpacked{part}"].seconds, stats[f"packed{part}"].seconds, strict=True)
    return statistics.median(u / p for u, p in pairs)


def pool_padding(records: list[dict], micro: int, max_length: int) -> str:
    """Packed padding when micro x accumulation samples share rows, for each of POOL_ACCUMS,
    from the samples' lengths alone (no timing)."""
    lengths = [int(r["num_tokens"]) for r in records]
    cells = []
    for accum in POOL_ACCUMS:
        size = micro * accum
        real = slots = 0
        for k in range(0, len(lengths) - size + 1, size):
            group = lengths[k : k + size]
            rows = pack_rows(group, max_length)
            real += sum(group)
            slots += len(rows) * max(sum(group[i] for i in row) for row in rows)
        cells.append(f"{size} samples {1 - real / slots:.1%}" if slots else f"{size}: -")
    return ", ".join(cells)


def print_table(stats: dict[str, ModeStats], args, model, scale: Scale) -> float:
    """The table; returns the packed / unpacked ratio of real tokens/s (`paired_ratio`)."""
    timed = len(stats["packed"].seconds)
    ratio = paired_ratio(stats)
    print(f"\nstage-II optimizer steps (forward + backward), {args.accum} x {args.micro} "
          f"MMC4-like documents per step, max_length {scale.max_length}, Q {model.num_queries}, "
          f"{model.num_patches} patches, text median {scale.text_median:.0f} tokens, LLM width "
          f"{args.llm_width} x {args.llm_layers} layers, {args.threads} CPU thread(s), {timed} "
          f"timed steps, 1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'mode':<22}{'rows/step':>10}{'padding':>9}{'median s/step':>15}{'real tok/s':>12}"
          f"{'ratio':>7}")
    for mode, s in stats.items():
        rate = s.real_tokens / sum(s.seconds)
        mode_ratio = paired_ratio(stats, LLM_ONLY if mode.endswith(LLM_ONLY) else "")
        print(f"{mode:<22}{s.rows / timed:>10.1f}{1 - s.real_tokens / s.slots:>9.1%}"
              f"{statistics.median(s.seconds):>15.2f}{rate:>12.0f}"
              f"{mode_ratio if mode.startswith('packed') else 1.0:>7.2f}")
    print("padding: pad slots / all slots (unpacked: each micro-batch padded to its longest "
          "sample; packed: the step's samples in rows of at most max_length, dealt to its "
          "micro-batches); real tok/s: non-pad tokens over the summed step times; ratio: "
          "median over steps of unpacked / packed step time (same samples in both); "
          f"{LLM_ONLY.strip()}: the LLM's forward, LM loss and backward alone (no CLIP, VAE, "
          "UNet), the part of the step that packing changes")
    return ratio


def main() -> int:
    """Parse arguments, build the model and samples, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", type=Path, default=None, help="tiny zoo dir (default: temp)")
    parser.add_argument("--micro", type=int, default=8, help="samples per micro-batch")
    parser.add_argument("--accum", type=int, default=16, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--llm-width", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the CPUs here are shared: one thread is the stable choice
    with tempfile.TemporaryDirectory() as tmp:
        model, scale, (plain, packed), transforms = build(args, Path(tmp))
        count = args.micro * args.accum * (args.steps + args.warmup)
        records = make_records(model, count, scale, transforms.clip_shape, transforms.sd_size)
        steps = {"unpacked": step_batches(records, plain, args.micro, args.accum),
                 "packed": step_batches(records, packed, args.micro, args.accum)}
        stats = measure(model, steps, args.warmup)
    ratio = print_table(stats, args, model, scale)
    print(f"packed padding by pool (micro {args.micro} x accumulation {POOL_ACCUMS}), "
          f"same documents: {pool_padding(records, args.micro, scale.max_length)}")
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
