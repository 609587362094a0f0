"""Text-to-image generation for COCO FID: (caption, seed) work items on a pool, resumable.

Every generation actor holds one model replica and takes chunks of work items; there are no
collectives. A work item is one caption of the manifest under one seed; its PNG goes to
`images/seed<s>/<item_id>.png` (a temp file, then a rename, so a killed run never leaves a
half-written PNG under the final name) and its record to the results store under
`<item_id>/seed<s>`. A re-run generates only the items with no record or no file.

Each image gets its own noise seed, derived from (item id, seed): an image then does not depend
on the batch or the actor it was generated in, so an interrupted and resumed run produces the
same bytes as an uninterrupted one. (The reference seeded each process with `seed + rank`, which
ties an image to the sharding.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dreamray.contracts import STAGE_FILE
from dreamray.evals.captions import CaptionManifest, generation_id
from dreamray.evals.pool import chunked
from dreamray.evals.results import ResultsStore
from dreamray.evals.telemetry import EvalProgress
from dreamray.files import atomic_path, sha256_file

IMAGES_DIR = "images"
TEMP_SUFFIX = ".tmp"  # hidden `.<name>.<random>.tmp` files: never an image to clean-fid's glob


@dataclass(frozen=True)
class SamplerSettings:
    """How images are sampled (the paper's protocol: DDPM, 150 steps, guidance 2.0)."""

    num_inference_steps: int = 150
    guidance_scale: float = 2.0
    scheduler: str = "ddpm"
    batch_size: int = 24


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """The folder of one seed's images."""
    return Path(out_dir) / IMAGES_DIR / f"seed{seed}"


def item_seed(item_id: str, seed: int) -> int:
    """The noise seed of one image: a hash of (item, run seed), so no two captions share noise."""
    digest = hashlib.sha256(generation_id(item_id, seed).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def work_items(manifest: CaptionManifest, seeds: list[int], out_dir: str | Path) -> list[dict]:
    """Every (caption, seed) work item of the run, seed-major.

    Args:
        manifest: the caption manifest.
        seeds: the run's seeds.
        out_dir: the run's output directory.

    Returns:
        Dicts with `id`, `item_id`, `caption`, `seed`, `noise_seed` and `path` (the final PNG).
    """
    return [
        {
            "id": generation_id(item.item_id, s),
            "item_id": item.item_id,
            "caption": item.caption,
            "seed": s,
            "noise_seed": item_seed(item.item_id, s),
            "path": str(seed_dir(out_dir, s) / f"{item.item_id}.png"),
        }
        for s in seeds
        for item in manifest.items
    ]


def pending_items(items: list[dict], store: ResultsStore) -> list[dict]:
    """The items still to generate: no record in the store, or the PNG is missing on disk."""
    return [w for w in items if w["id"] not in store or not Path(w["path"]).is_file()]


def save_png_atomic(image: Any, path: str | Path) -> None:
    """Save a PIL image as PNG through a temp file in the same folder and a rename."""
    with atomic_path(path, suffix=TEMP_SUFFIX) as tmp:
        image.save(tmp, format="PNG")


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temp files a killed run left in `folder` (they would show up as skipped files).

    Only for a folder no other process is writing to (one run per out_dir).

    Returns:
        How many were removed.
    """
    stale = list(Path(folder).glob(f".*{TEMP_SUFFIX}")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink()
    return len(stale)


class ImageWorker:
    """One model replica turning chunks of work items into PNG files."""

    def __init__(self, model_dir: str, sampler: SamplerSettings) -> None:
        """Load the artifact (fp32; on the GPU when the actor has one).

        Args:
            model_dir: a DreamLLM artifact directory.
            sampler: the sampling settings.
        """
        import torch

        from dreamray.model.dreamllm import DreamLLM

        # fp32, as the reference's FID sampling (`load full-precision`): bf16 would shift FID.
        self.model = DreamLLM.from_pretrained(model_dir)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.sampler = sampler

    def info(self) -> dict[str, Any]:
        """The generated images' side in pixels."""
        return {"resolution": int(self.model.stable_diffusion_head.resolution)}

    def generate(self, items: list[dict]) -> list[dict]:
        """Generate and save the images of `items` (in batches of `sampler.batch_size`).

        Args:
            items: work items from `work_items`.

        Returns:
            One store record per item (`id`, `item_id`, `seed`, `path`, `sha256`).
        """
        from dreamray.model import generation

        records = []
        for batch in chunked(items, self.sampler.batch_size):
            images = generation.generate_images(
                self.model,
                [w["caption"] for w in batch],
                guidance_scale=self.sampler.guidance_scale,
                num_inference_steps=self.sampler.num_inference_steps,
                scheduler=self.sampler.scheduler,
                seed=[w["noise_seed"] for w in batch],
            )
            for w, image in zip(batch, images, strict=True):
                save_png_atomic(image, w["path"])
                keys = ("id", "item_id", "seed", "path")
                records.append({**{k: w[k] for k in keys}, "sha256": sha256_file(w["path"])})
        return records


def generate_missing(
    items: list[dict],
    store: ResultsStore,
    pool: Any,
    chunk_size: int,
    progress: bool = True,
    max_items: int | None = None,
) -> int:
    """Generate the pending items on `pool`, recording each finished chunk in `store`.

    Args:
        items: every work item of the run.
        store: the generation results store (already holding the finished items).
        pool: a pool of `ImageWorker`s (`make_pool`).
        chunk_size: work items per actor task.
        progress: show the tqdm bar.
        max_items: stop once this many items are recorded in this call (a debug knob that
            simulates a killed run; None: run to the end).

    Returns:
        How many images this call generated.
    """
    todo = pending_items(items, store)
    bar = EvalProgress("coco_fid_generate", len(todo), progress)
    done = 0
    for records in _chunks_done(pool, chunked(todo, chunk_size)):
        store.append(records)
        bar.update(len(records))
        done += len(records)
        if max_items is not None and done >= max_items:
            break
    bar.close()
    return done


def _chunks_done(pool: Any, chunks: list[list[dict]]) -> Iterator[list[dict]]:
    for _, records in pool.map_unordered(ImageWorker.generate, chunks):
        yield records


def artifact_hash(model_dir: str | Path) -> dict[str, str]:
    """The model's identity for the protocol card.

    Args:
        model_dir: the artifact directory.

    Returns:
        `{"kind": "stage.json", "sha256": ...}` when the runner's stage record is there, else
        `{"kind": "files", "sha256": ...}` over every file's relative path and sha256.
    """
    root = Path(model_dir)
    if (root / STAGE_FILE).is_file():
        return {"kind": STAGE_FILE, "sha256": sha256_file(root / STAGE_FILE)}
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return {"kind": "files", "sha256": digest.hexdigest()}


def sampler_card(sampler: SamplerSettings) -> dict[str, Any]:
    """The sampler fields that decide the pixels (batch size does not: per-image seeds)."""
    card = asdict(sampler)
    del card["batch_size"]
    return card
