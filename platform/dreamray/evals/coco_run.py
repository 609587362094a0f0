"""COCO text-to-image FID, the paper's protocol end to end: manifest, generate, re-rank, score.

`generate_and_score(run, out_dir)` is what both the CLI (`evals/coco_fid.py generate-and-score`)
and the recipe's eval stage (`stage.run_coco_fid`) call. Layout of `out_dir`:

- `manifest.json`: one fixed caption per image (shared by every seed and by the re-ranking);
- `run.json`: what decides the pixels (model hash, sampler); a re-run with other settings stops;
- `generated.jsonl` + `images/seed<s>/<item>.png`: the generation store and images;
- `reranked.jsonl` + `images/reranked/<item>.png`: CLIP best-of-seeds selections;
- `scores.json`: FID per seed and of the re-ranked set, with the protocol card; `grid.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.evals.captions import (
    CaptionManifest,
    build_coco_manifest,
    read_manifest,
    write_manifest,
)
from dreamray.evals.clip_rerank import (
    ClipWorker,
    pending_groups,
    rerank,
    rerank_groups,
    reranked_dir,
)
from dreamray.evals.coco_gen import (
    ImageWorker,
    SamplerSettings,
    artifact_hash,
    generate_missing,
    pending_items,
    remove_stale_temps,
    sampler_card,
    seed_dir,
    work_items,
)
from dreamray.evals.fid_eval import (
    FeatureWorker,
    FidSettings,
    assert_finite,
    folder_stats,
    reference_stats,
    start_pool,
)
from dreamray.evals.grid import write_grid
from dreamray.evals.offline_weights import require_clip_model
from dreamray.evals.pool import PoolOptions, make_pool
from dreamray.evals.results import GRID_FILE, ResultsStore
from dreamray.files import atomic_write_json, sha256_file
from dreamray.metrics.fid import frechet_distance, load_stats

PROTOCOL_NAME = "dreamllm_coco_fid"


@dataclass(frozen=True)
class CocoFidRun:
    """Everything a generate-and-score run needs (paths, protocol, how work is spread)."""

    model_dir: str
    captions: str
    num_samples: int
    seeds: tuple[int, ...]
    fid: FidSettings
    sampler: SamplerSettings = SamplerSettings()
    gen_pool: PoolOptions = field(default_factory=PoolOptions)
    ref_stats: str | None = None
    ref_images: str | None = None
    clip_model: str | None = None
    manifest_seed: int = 0
    resolution: int | None = None  # the protocol's image side; None: whatever the model makes
    chunk_size: int = 8
    max_items: int | None = None  # debug: stop generating after this many (simulates a kill)


class RunMismatchError(ValueError):
    """An out_dir holding a run with another manifest, model or sampler."""


def fix_manifest(run: CocoFidRun, out: Path) -> tuple[CaptionManifest, str]:
    """Build the manifest, write it once, and refuse an out_dir built from other captions.

    Returns:
        (the manifest, its file's sha256).

    Raises:
        ManifestError: a captions file that is not COCO, or too few images.
        RunMismatchError: `out` already holds another manifest.
    """
    path = out / "manifest.json"
    manifest = build_coco_manifest(run.captions, run.num_samples, run.manifest_seed)
    if not path.is_file():
        return manifest, write_manifest(path, manifest)
    if read_manifest(path).meta != json.loads(json.dumps(manifest.meta)):
        raise RunMismatchError(f"{path} was built from other captions or settings: new out_dir")
    return manifest, sha256_file(path)


def check_inputs(run: CocoFidRun) -> None:
    """Fail before hours of generation on inputs that scoring or ranking would reject.

    Raises:
        FidError: missing or unreadable reference statistics.
        FileNotFoundError: a missing reference folder, or (MissingWeightsError) CLIP dir.
        StatsDimensionError: reference statistics of another dimension than the extractor's.
    """
    if run.ref_stats is not None:
        load_stats(run.ref_stats, expected_dim=run.fid.feature_dim())
    if run.ref_images is not None and not Path(run.ref_images).is_dir():
        raise FileNotFoundError(f"reference image folder {run.ref_images} does not exist")
    require_clip_model(run.clip_model, option="clip_model")


def check_run_card(run: CocoFidRun, out: Path) -> dict[str, Any]:
    """Write `run.json` (model hash + sampler) or check that it matches this run.

    Seeds are not part of it: each image has its own noise seed, so seeds can be added later.

    Raises:
        RunMismatchError: the stored images were made by another model or sampler.
    """
    card = {"model": artifact_hash(run.model_dir), "sampler": sampler_card(run.sampler)}
    path = out / "run.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != card:
            raise RunMismatchError(f"{path}: stored run {stored} differs from {card}: new out_dir")
    else:
        atomic_write_json(path, card)
    return card


def generate(run: CocoFidRun, items: list[dict], out: Path) -> tuple[ResultsStore, int]:
    """Generate the missing images on a pool of `ImageWorker`s (none started if none missing).

    Returns:
        (the generation store, how many images this call made).
    """
    store = ResultsStore(out / "generated.jsonl")
    if not pending_items(items, store):
        return store, 0
    with make_pool(ImageWorker, run.gen_pool, run.model_dir, run.sampler) as pool:
        # before hours of work
        check_resolution(run, pool.call_ready(ImageWorker.info)[0]["resolution"])
        made = generate_missing(items, store, pool, run.chunk_size, run.fid.progress, run.max_items)
    return store, made


def select(run: CocoFidRun, manifest: CaptionManifest, out: Path) -> int:
    """CLIP-rank the captions not ranked yet (no CLIP actor is started when none are left).

    Returns:
        How many captions this call ranked.
    """
    store = ResultsStore(out / "reranked.jsonl")
    todo = pending_groups(rerank_groups(manifest, list(run.seeds), out), out, store)
    if not todo:
        return 0
    with make_pool(ClipWorker, run.gen_pool, run.clip_model) as pool:
        return rerank(todo, out, store, pool, run.chunk_size, run.fid.progress)


def check_resolution(run: CocoFidRun, resolution: int) -> int:
    """Return `resolution` when it is the protocol's (or the protocol names none).

    Raises:
        ValueError: the model makes images of another size than `run.resolution`.
    """
    if run.resolution is not None and resolution != run.resolution:
        raise ValueError(f"model makes {resolution} px images, the protocol says {run.resolution}")
    return resolution


def image_resolution(items: list[dict]) -> int:
    """The side of the generated images (read from the first PNG; they are all the same)."""
    from PIL import Image

    with Image.open(items[0]["path"]) as image:
        return image.size[0]


def score(folders: dict[str, Path], run: CocoFidRun, out: Path) -> tuple[dict, dict, dict]:
    """FID of every folder against the reference, on one feature pool.

    Returns:
        (scores by folder name, reference provenance, feature extractor card).

    Raises:
        FidError: too few images; StatsDimensionError: reference of another dimension.
    """
    ref = None
    if run.ref_stats is not None:  # a wrong file fails before any feature is computed
        ref = load_stats(run.ref_stats, expected_dim=run.fid.feature_dim())
        provenance = {
            **ref.meta.get("reference", {}),
            "kind": "stats",
            "path": run.ref_stats,
            "sha256": sha256_file(run.ref_stats),
        }
    scores = {}
    with start_pool(run.fid) as pool:
        extractor = pool.call_ready(FeatureWorker.info)[0]
        if ref is None:
            ref, provenance = reference_stats(run.ref_images, run.fid, pool, out / "ref_cache")
        for name, folder in folders.items():
            result = folder_stats(folder, run.fid, pool, name)
            mu, sigma = result.stats.mean_cov()
            fid = assert_finite(frechet_distance(mu, sigma, ref.mu, ref.sigma))
            skipped = [s.to_json() for s in result.skipped]
            scores[name] = {"fid": fid, "n": result.stats.n, "skipped": skipped}
    return scores, provenance, extractor


def protocol_card(run: CocoFidRun, manifest_sha: str, resolution: int, extra: dict) -> dict:
    """The protocol card every score file carries."""
    return {
        "protocol_name": PROTOCOL_NAME,
        "N": run.num_samples,
        "seeds": list(run.seeds),
        **sampler_card(run.sampler),
        "resolution": resolution,
        "manifest": {"sha256": manifest_sha, "seed": run.manifest_seed, "captions": run.captions},
        "model": {"dir": str(run.model_dir), **artifact_hash(run.model_dir)},
        "clip_rerank": (
            {"dir": run.clip_model, **artifact_hash(run.clip_model)} if run.clip_model else None
        ),
        **run.fid.identity(),
        **extra,
    }


@dataclass(frozen=True)
class Generated:
    """The generation phase's outcome: the fixed manifest and every (caption, seed) item."""

    manifest: CaptionManifest
    manifest_sha: str
    items: list[dict]
    made: int  # images this call generated
    missing: int  # items still without an image (a `max_items` stop)

    def incomplete(self) -> dict[str, Any]:
        """The result of a run stopped before every image was made."""
        return {"status": "incomplete", "generated": self.made, "missing": self.missing}


def generate_all(run: CocoFidRun, out_dir: str | Path) -> Generated:
    """Fix the manifest and the run card, then generate (or resume) every image.

    The phase both coco_fid and attribute_match run before they score the images.

    Args:
        run: the run's settings (its FID settings are not used here).
        out_dir: the output directory (reused across restarts).

    Returns:
        The manifest and items, with how many images were made and are missing.

    Raises:
        ManifestError: bad captions file / too few images; RunMismatchError: out_dir of another
        run; ValueError: model resolution differs from `run.resolution`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest, manifest_sha = fix_manifest(run, out)
    check_run_card(run, out)
    items = work_items(manifest, list(run.seeds), out)
    for folder in [*(seed_dir(out, s) for s in run.seeds), reranked_dir(out)]:
        remove_stale_temps(folder)
    store, made = generate(run, items, out)
    missing = len(pending_items(items, store))
    return Generated(manifest, manifest_sha, items, made, missing)


def generate_and_score(run: CocoFidRun, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the whole protocol and write `scores.json` and `grid.png`.

    Args:
        run: the run's settings.
        out_dir: the output directory (reused across restarts).

    Returns:
        The scores with their card, or `{"status": "incomplete", ...}` when `max_items` stopped
        generation early.

    Raises:
        ManifestError: bad captions file / too few images; RunMismatchError: out_dir of another
        run; ValueError: model resolution differs from `run.resolution`; FidError: bad reference;
        FileNotFoundError: a missing reference folder or CLIP dir (checked before generating).
    """
    check_inputs(run)
    gen = generate_all(run, out_dir)
    if gen.missing:
        return gen.incomplete()
    manifest, manifest_sha, items, made = gen.manifest, gen.manifest_sha, gen.items, gen.made
    out = Path(out_dir)
    resolution = check_resolution(run, image_resolution(items))
    folders = {f"seed{s}": seed_dir(out, s) for s in run.seeds}
    if run.clip_model is not None and len(run.seeds) > 1:
        select(run, manifest, out)
        folders["reranked"] = reranked_dir(out)
    scores, provenance, extractor = score(folders, run, out)
    extra = {
        "reference": provenance,
        "ref_stats_sha256": provenance["sha256"] if provenance["kind"] == "stats" else None,
        "feature_extractor": extractor,
    }
    result = summarize(scores, list(run.seeds))
    result.update(card=protocol_card(run, manifest_sha, resolution, extra), generated=made)
    atomic_write_json(out / "scores.json", result)
    write_grid(out / GRID_FILE, manifest, folders)
    return result


def summarize(scores: dict[str, dict], seeds: list[int]) -> dict[str, Any]:
    """The headline FID (re-ranked when there is one, else the mean over seeds) and the rest."""
    per_seed = {s: scores[f"seed{s}"]["fid"] for s in seeds}
    mean = sum(per_seed.values()) / len(per_seed)
    reranked = scores["reranked"]["fid"] if "reranked" in scores else None
    return {
        "status": "complete",
        "fid": reranked if reranked is not None else mean,
        "headline": "reranked" if reranked is not None else "mean_over_seeds",
        "fid_per_seed": {str(s): v for s, v in per_seed.items()},
        "fid_mean_over_seeds": mean,
        "fid_reranked": reranked,
        "folders": scores,
    }
