"""Frozen-tower precompute: stage-I steps/s on precomputed features vs on pixels.

Both branches of stage I train only plugins (comprehension: the vision projector; creation: the
dream queries and the condition projector), yet on pixels every step runs the frozen CLIP tower
(comprehension) or the VAE encoder (creation). Here the same batches, cut by the real data path
(`StagePlan` -> records -> `iter_train_batches`) from the same synthetic pairs, run forward +
backward of the same model, once as pixels and once as the features a precompute made of them
(`dreamray.data.feature_compute`), alternating per step so load drift hits both alike.

Scale: the real recipe's tower/LLM cost ratio is what decides the speed-up, so the model is
scaled like it (`--llm-width`, `--llm-layers`; the CLIP tower gets a quarter of the LLM's width
and three quarters of its depth, as CLIP ViT-L/14 (1024 x 24) to Vicuna-7B (4096 x 32); the
VAE and UNet are the tiny zoo's). The table gives the measured share of a pixel step spent in
the towers, and the same share for the real recipe from FLOPs written out below, with the
speed-up it bounds (1 / (1 - share): a step cannot get faster than its non-tower part).
Last line: ``ratio: <total pixel step time / total features step time>`` (target >= 2.0).

    .venv/bin/python benchmarks/precompute.py [--steps 6] [--micro 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Real-recipe FLOPs per stage-I sample (forward = 2 x params x tokens; a frozen LLM or UNet still
# runs backward to its inputs, about one more forward).
_LLM_PARAMS, _CLIP_PARAMS = 6.7e9, 3.04e8
_COMPREHENSION_TOKENS, _CREATION_TOKENS = 256 + 40, 40 + 64 + 2
_VAE_ENCODER_FLOPS_512 = 5.4e11  # SD VAE encoder at 512 px (about 0.27 TMAC)
_UNET_FLOPS_64 = 8.0e11  # SD 2.1 UNet forward at 64 x 64 latents (about 0.4 TMAC)
REAL_SHARE = {
    "comprehension": 2 * _CLIP_PARAMS * 257
    / (2 * _CLIP_PARAMS * 257 + 2 * 2 * _LLM_PARAMS * _COMPREHENSION_TOKENS),
    "creation": _VAE_ENCODER_FLOPS_512
    / (_VAE_ENCODER_FLOPS_512 + 2 * 2 * _LLM_PARAMS * _CREATION_TOKENS + 2 * _UNET_FLOPS_64),
}
TRAINABLE = {"comprehension": ["vision_projector"],
             "creation": ["dream_queries", "condition_projector"]}


def scaled_vision(out: Path, zoo_vision: Path, llm_width: int, llm_layers: int) -> Path:
    """The zoo's CLIP processor with a tower of 1/4 the LLM's width, 3/4 its depth, 64
    patches."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from dreamray.zoo import tiny_vision_config

    config = tiny_vision_config(image_size=64)
    config.hidden_size = max(32, llm_width // 4)
    config.intermediate_size = 4 * config.hidden_size
    config.num_hidden_layers = max(1, 3 * llm_layers // 4)
    config.num_attention_heads = max(1, config.hidden_size // 32)
    torch.manual_seed(0)
    CLIPVisionModel(config).save_pretrained(out)
    processor = CLIPImageProcessor.from_pretrained(zoo_vision)
    processor.size, processor.crop_size = {"shortest_edge": 64}, {"height": 64, "width": 64}
    processor.save_pretrained(out)
    return out


def write_pairs(root: Path, count: int) -> Path:
    """A source of image-caption pairs: ~512 px photo-like JPEGs, as LAION's."""
    import pyarrow.parquet as pq
    from data_throughput import realistic_jpeg

    from dreamray.data.schema import rows_to_table

    rows = []
    rng = np.random.default_rng(0)
    for i in range(count):
        rows.append({"id": f"p/{i}", "source": "p", "kind": "pair",
                     "texts": [f"a photo of thing number {i} on a table"], "roles": [],
                     "instruction": None, "images": [realistic_jpeg(rng)], "image_after": [0],
                     "image_sim": None})
    root.mkdir(parents=True)
    pq.write_table(rows_to_table(rows), root / "part-0.parquet", row_group_size=64)
    return root


def stage_spec(paths: dict, mode: str, micro: int, samples: int, features=None):
    from dreamray.config.specs import TrainStageSpec

    return TrainStageSpec.model_validate({
        "model": {"llm_path": str(paths["llm"]), "vision_path": str(paths["vision"]),
                  "diffusion_path": str(paths["sd"]), "num_dream_queries": 16,
                  "max_length": 256, "gradient_checkpointing": False},
        "trainable": TRAINABLE[mode],
        "data": {"sources": [{"name": "p", "path": str(paths["pairs"]), "weight": 1.0}],
                 "mode": mode, "num_samples": samples, "seed": 0,
                 "features": None if features is None else str(features)},
        "optim": {"lr": 1e-3}, "loss": {"lm": float(mode == "comprehension"),
                                        "vm": float(mode == "creation")},
        "deepspeed": {"global_batch_size": micro, "micro_batch_per_gpu": micro},
    })


class _Shard:
    def __init__(self, tables):
        self.tables = tables

    def iter_batches(self, **_kwargs):
        yield from self.tables


def build_records(stage) -> tuple[list, float]:
    """The stage's records (a map actor's work, in this process) and records/s."""
    from dreamray.data.pipeline import ChunkBuilder, StagePlan, index_sources

    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, 32)
    build = ChunkBuilder(plan)
    started = time.perf_counter()
    tables = [build({"id": np.array([c])}) for c in range(plan.num_chunks)]
    return tables, sum(t.num_rows for t in tables) / (time.perf_counter() - started)


def batches(stage, count: int) -> list[dict]:
    from dreamray.data.batches import iter_train_batches, make_collate_spec
    from dreamray.data.pipeline import stage_fingerprint
    from dreamray.data.progress import DataProgress

    tables, _ = build_records(stage)
    spec = make_collate_spec(stage, stage.model.llm_path)
    progress = DataProgress(stage_fingerprint(stage.data))
    micro = stage.deepspeed.micro_batch_per_gpu
    return [b for b, _ in iter_train_batches(_Shard(tables), spec, micro, count, progress)]


def step_seconds(model, batch: dict) -> float:
    """Wall time of one forward + backward on a batch."""
    from dreamray.train.loop import to_device

    inputs = to_device(batch, torch.device("cpu"), torch.float32)
    started = time.perf_counter()
    out = model(**inputs, lm_weight=1.0, vm_weight=1.0)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure(paths: dict, features_dir: Path, mode: str, args) -> dict[str, float]:
    """Median step seconds of both paths of one branch, and its towers' share."""
    from dreamray.model.build import build_dreamllm
    from dreamray.model.groups import freeze_all_but

    samples = args.micro * (args.steps + args.warmup)
    pixel = batches(stage_spec(paths, mode, args.micro, samples), args.steps + args.warmup)
    feats = batches(stage_spec(paths, mode, args.micro, samples, features_dir),
                    args.steps + args.warmup)
    torch.manual_seed(0)
    model = build_dreamllm(stage_spec(paths, mode, args.micro, samples).model)
    freeze_all_but(model, TRAINABLE[mode])
    model.train()
    times = {"pixels": [], "features": []}
    for i, (p, f) in enumerate(zip(pixel, feats, strict=True)):
        pair = [("pixels", p), ("features", f)][:: 1 if i % 2 else -1]
        for name, batch in pair:
            seconds = step_seconds(model, batch)
            if i >= args.warmup:
                times[name].append(seconds)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["tower_share"] = 1.0 - out["features"] / out["pixels"]
    return out


def precompute_features(paths: dict, out: Path) -> float:
    """Features of the pairs source; returns images/s of the towers."""
    from dreamray.config.precompute_specs import PrecomputeSpec
    from dreamray.data.feature_compute import TowerRunner, feature_info, make_feature_shard

    spec = PrecomputeSpec(vision_path=str(paths["vision"]), diffusion_path=str(paths["sd"]),
                          sources=[{"name": "p", "path": str(paths["pairs"])}], batch_size=32)
    runner = TowerRunner(spec, torch.device("cpu"))
    out.mkdir()
    feature_info(spec).save(out)
    result = make_feature_shard(runner, "p", str(paths["pairs"]),
                                str(paths["pairs"] / "part-0.parquet"), str(out))
    return result.images / result.seconds


def print_table(stats: dict[str, dict], images_per_s: float, args) -> float:
    print(f"\nstage-I steps, micro-batch {args.micro}, {args.steps} timed steps per path; LLM "
          f"{args.llm_width} x {args.llm_layers}, CLIP {max(32, args.llm_width // 4)} x "
          f"{max(1, 3 * args.llm_layers // 4)}; load average "
          f"{os.getloadavg()[0]:.2f}; precompute {images_per_s:.1f} img/s")
    print(f"{'branch':<15}{'pixels s/step':>15}{'features s/step':>17}{'ratio':>8}"
          f"{'tower share':>13}{'real share':>12}{'real bound':>12}")
    for mode, s in stats.items():
        real = REAL_SHARE[mode]
        print(f"{mode:<15}{s['pixels']:>15.3f}{s['features']:>17.3f}"
              f"{s['pixels'] / s['features']:>8.2f}{s['tower_share']:>13.1%}{real:>12.1%}"
              f"{1 / (1 - real):>11.2f}x")
    ratio = sum(s["pixels"] for s in stats.values()) / sum(s["features"] for s in stats.values())
    print(f"ratio: {ratio:.2f}")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--llm-width", type=int, default=256)
    parser.add_argument("--llm-layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    from packing import wide_llm  # this directory is on sys.path when run as a script

    from dreamray.zoo import build_tiny_zoo

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        zoo = build_tiny_zoo(tmp / "zoo")
        paths = {"llm": wide_llm(tmp / "llm", args.llm_width, args.llm_layers),
                 "vision": scaled_vision(tmp / "clip", zoo.vision, args.llm_width,
                                         args.llm_layers),
                 "sd": zoo.diffusion,
                 "pairs": write_pairs(tmp / "pairs", args.micro * (args.steps + 2) + 64)}
        images_per_s = precompute_features(paths, tmp / "features")
        stats = {mode: measure(paths, tmp / "features", mode, args) for mode in TRAINABLE}
        data_rates = {name: max(build_records(stage_spec(paths, "creation", args.micro, 64,
                                                         f))[1] for _ in range(2))
                      for name, f in (("pixels", None), ("features", tmp / "features"))}
        print(f"\ndata side (one map actor building creation records of ~512 px JPEGs, best "
              f"of 2): pixels "
              f"{data_rates['pixels']:.0f} records/s, features {data_rates['features']:.0f} "
              f"records/s ({data_rates['features'] / data_rates['pixels']:.2f}x)")
        print_table(stats, images_per_s, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
