"""Helpers of the COCO generate-and-score tests: a tiny artifact, captions, reference stats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dreamray.evals.coco_gen import SamplerSettings
from dreamray.evals.coco_run import CocoFidRun
from dreamray.evals.fid_eval import FidSettings, write_reference_stats
from dreamray.evals.pool import PoolOptions
from dreamray.evals.synthetic_images import write_varied_images

EXTRACTOR = "tiny:0"
SEEDS = (42, 43)
N = 4


def write_artifact(zoo, out: Path) -> Path:
    """The tiny zoo DreamLLM saved as an artifact dir (the model tests' fixture model)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from model_fixtures import built_model

    built_model(zoo).save_pretrained(out)
    return out


def write_captions(path: Path, num_images: int = 6) -> Path:
    """A COCO captions file: `num_images` images with two captions each."""
    images = [
        {"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, num_images + 1)
    ]
    words = ["dog", "cat", "red bus", "kite", "pizza", "boat", "train", "horse"]
    annotations = [
        {"id": 10 * i + k, "image_id": i, "caption": f"a {words[i % len(words)]} number {k}"}
        for i in range(1, num_images + 1)
        for k in range(2)
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def write_ref_stats(root: Path, num_images: int = 6) -> Path:
    """Reference statistics (tiny:0 extractor, dreamllm protocol) of synthetic images."""
    write_varied_images(root / "ref_images", num_images, seed=3, min_size=16, max_size=24)
    out = root / "ref.npz"
    write_reference_stats(root / "ref_images", fid_settings(0), out)
    return out


def fid_settings(num_actors: int) -> FidSettings:
    """FID settings of the tests (in-process when num_actors is 0)."""
    return FidSettings(
        protocol="dreamllm",
        extractor=EXTRACTOR,
        batch_size=8,
        chunk_size=4,
        progress=False,
        pool=PoolOptions(num_actors=num_actors, num_cpus=1),
    )


def tiny_run(artifact: Path, captions: Path, ref: Path, **overrides) -> CocoFidRun:
    """A 4-caption x 2-seed, 2-step in-process run."""
    fields = dict(
        model_dir=str(artifact),
        captions=str(captions),
        num_samples=N,
        seeds=SEEDS,
        fid=fid_settings(0),
        sampler=SamplerSettings(num_inference_steps=2, guidance_scale=2.0, batch_size=2),
        gen_pool=PoolOptions(num_actors=0),
        ref_stats=str(ref),
        chunk_size=2,
    )
    fields.update(overrides)
    return CocoFidRun(**fields)
