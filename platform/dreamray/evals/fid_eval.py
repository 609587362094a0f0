"""FID of image folders: features on an actor pool, float64 statistics merged on the driver.

Each actor (a `FeatureWorker`) loads the feature network once and turns chunks of files into
sufficient statistics (n, sum x, sum x x^T); the driver adds them up, so the result does not
depend on how the files were split. Unreadable files are skipped and listed in the result.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamray.evals.features import (
    INCEPTION_DIM,
    TINY_DIM,
    TINY_PREFIX,
    build_extractor,
    get_protocol,
    image_dataset,
)
from dreamray.evals.images import Skip, content_hash, list_images
from dreamray.evals.pool import PoolOptions, chunked, make_pool
from dreamray.evals.telemetry import EvalProgress
from dreamray.files import sha256_file
from dreamray.metrics.fid import (
    FeatureStats,
    FidError,
    ReferenceStats,
    frechet_distance,
    load_stats,
    save_stats,
)

# What a broken or non-image file raises inside PIL / numpy while clean-fid's dataset loads it.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FidSettings:
    """Everything that decides an FID number, plus how the work is spread."""

    protocol: str
    extractor: str = "inception"
    inception_weights: str | None = None
    batch_size: int = 32
    chunk_size: int = 128
    device: str = "cpu"
    pool: PoolOptions = field(default_factory=PoolOptions)
    progress: bool = True

    def feature_dim(self) -> int:
        """The extractor's output dimension, known without building it."""
        return TINY_DIM if self.extractor.startswith(TINY_PREFIX) else INCEPTION_DIM

    def identity(self) -> dict[str, Any]:
        """What the features depend on: protocol, extractor and its weights' hash."""
        weights = self.inception_weights
        return {
            **get_protocol(self.protocol).card(),
            "feature_extractor": self.extractor,
            "inception_weights_sha256": sha256_file(weights) if weights else None,
        }


class FeatureWorker:
    """Turns lists of image files into float64 sufficient statistics (one network, loaded once)."""

    def __init__(
        self, protocol: str, extractor: str, weights: str | None, batch_size: int, device: str
    ) -> None:
        self.protocol = get_protocol(protocol)
        self.extractor = build_extractor(extractor, self.protocol, weights, device)
        self.batch_size = batch_size
        self.device = device

    def info(self) -> dict[str, Any]:
        """The extractor's card (name, dim, weights sha256)."""
        return self.extractor.card()

    def stats(self, files: list[str]) -> dict[str, Any]:
        """Statistics of the readable files among `files`.

        Args:
            files: image paths.

        Returns:
            `{"stats": FeatureStats.to_arrays(), "skipped": [{"path", "reason"}]}`.
        """
        dataset = image_dataset(files, self.protocol)
        stats, skipped, batch = FeatureStats(self.extractor.dim), [], []
        for i, path in enumerate(files):
            try:
                batch.append(dataset[i])
            except _UNREADABLE as err:
                skipped.append(Skip(path, f"unreadable: {type(err).__name__}: {err}").to_json())
                continue
            if len(batch) == self.batch_size:
                self._add(batch, stats)
                batch = []
        if batch:
            self._add(batch, stats)
        return {"stats": stats.to_arrays(), "skipped": skipped}

    def _add(self, batch: list[torch.Tensor], stats: FeatureStats) -> None:
        with torch.no_grad():
            features = self.extractor.fn(torch.stack(batch).to(self.device))
        stats.update(features.detach().cpu().numpy())


@dataclass
class FolderStats:
    """Statistics of one folder and the files left out of them."""

    folder: str
    stats: FeatureStats
    skipped: list[Skip]
    seconds: float


def start_pool(settings: FidSettings) -> Any:
    """The feature-worker pool for these settings (in-process when `pool.num_actors == 0`)."""
    return make_pool(
        FeatureWorker,
        settings.pool,
        settings.protocol,
        settings.extractor,
        settings.inception_weights,
        settings.batch_size,
        settings.device,
    )


def folder_stats(folder: str | Path, settings: FidSettings, pool: Any, label: str) -> FolderStats:
    """Extract and merge the statistics of every image in a folder.

    Args:
        folder: the image folder.
        settings: the FID settings.
        pool: a pool from `start_pool`.
        label: a name for the progress bar and metrics (e.g. `images`, `reference`).

    Returns:
        The merged statistics with every skipped file.

    Raises:
        FidError: fewer than 2 readable images.
    """
    listing = list_images(folder)
    _require_two(len(listing.files), listing.folder, listing.skipped)
    progress = EvalProgress(f"fid_features:{label}", len(listing.files), settings.progress)
    merged, skipped = FeatureStats(settings.feature_dim()), list(listing.skipped)
    chunks = chunked(listing.files, settings.chunk_size)
    for index, result in pool.map_unordered(FeatureWorker.stats, chunks):
        merged.merge(FeatureStats.from_arrays(result["stats"]))
        skipped += [Skip(**s) for s in result["skipped"]]
        progress.update(len(chunks[index]), len(result["skipped"]))
    seconds = progress.close()
    _require_two(merged.n, listing.folder, skipped)
    return FolderStats(listing.folder, merged, sorted(skipped, key=lambda s: s.path), seconds)


def _require_two(n: int, folder: str, skipped: list[Skip]) -> None:
    if n < 2:
        raise FidError(
            f"{folder}: FID needs at least 2 readable images, found {n}"
            + (
                f" ({len(skipped)} files skipped, e.g. {skipped[0].path}: {skipped[0].reason})"
                if skipped
                else ""
            )
        )


def reference_key(images: str | Path, settings: FidSettings) -> str:
    """The content-hash cache key of a reference folder under these settings."""
    listing = list_images(images)
    identity = json.dumps(settings.identity(), sort_keys=True)
    return content_hash(listing.files, listing.folder, identity)


def reference_stats(
    images: str | Path, settings: FidSettings, pool: Any, cache_dir: str | Path | None = None
) -> tuple[ReferenceStats, dict[str, Any]]:
    """Statistics of a reference folder, reused from `cache_dir` when its content is unchanged.

    The cache key hashes the file names and bytes together with the protocol, the extractor
    and the weights' hash (`FidSettings.identity`).

    Args:
        images: the reference image folder.
        settings: the FID settings.
        pool: a pool from `start_pool`.
        cache_dir: where `<key>.npz` files are kept; None disables the cache.

    Returns:
        (the statistics, their provenance: `{"kind", "folder", "content_hash", "n", "cached",
        "skipped"}`).

    Raises:
        FidError: fewer than 2 readable images.
    """
    key = reference_key(images, settings)
    cached = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        ref = load_stats(cached, expected_dim=settings.feature_dim())
        return ref, {**ref.meta["reference"], "cached": True}
    result = folder_stats(images, settings, pool, "reference")
    mu, sigma = result.stats.mean_cov()
    provenance = {
        "kind": "images",
        "folder": str(Path(images).resolve()),
        "content_hash": key,
        "n": result.stats.n,
        "skipped": [s.to_json() for s in result.skipped],
    }
    ref = ReferenceStats(mu, sigma, {"reference": provenance, "identity": settings.identity()})
    if cached is not None:
        save_stats(cached, mu, sigma, ref.meta)
    return ref, {**provenance, "cached": False}


def score_folders(
    images: str | Path,
    settings: FidSettings,
    ref_images: str | Path | None = None,
    ref_stats: str | Path | None = None,
    cache_dir: str | Path | None = None,
    save_images_stats: str | Path | None = None,
) -> dict[str, Any]:
    """FID of an image folder against a reference folder or reference statistics.

    Args:
        images: the folder to score (e.g. generated images).
        settings: protocol, extractor and pool.
        ref_images: a reference image folder (exclusive with `ref_stats`).
        ref_stats: a reference `.npz` with `mu` and `sigma` (pytorch-fid / clean-fid / ours).
        cache_dir: cache for the reference folder's statistics.
        save_images_stats: also write the scored folder's mu / sigma (and the card) here.

    Returns:
        `{"fid", "n", "n_ref", "skipped", "seconds", "card"}`; `card` is the protocol card.

    Raises:
        ValueError: not exactly one of ref_images / ref_stats.
        FidError: too few images; StatsDimensionError: statistics of another dimension.
    """
    if (ref_images is None) == (ref_stats is None):
        raise ValueError("give exactly one of ref_images and ref_stats")
    ref = None
    if ref_stats is not None:  # fail on a wrong file before any feature is computed
        ref = load_stats(ref_stats, expected_dim=settings.feature_dim())
        provenance = {
            **ref.meta.get("reference", {}),
            "kind": "stats",
            "path": str(ref_stats),
            "sha256": sha256_file(ref_stats),
        }
    with start_pool(settings) as pool:
        extractor_card = pool.call_ready(FeatureWorker.info)[0]
        if ref is None:
            ref, provenance = reference_stats(ref_images, settings, pool, cache_dir)
        result = folder_stats(images, settings, pool, "images")
    mu, sigma = result.stats.mean_cov()
    card = {
        **get_protocol(settings.protocol).card(),
        "feature_extractor": extractor_card,
        "images": {"folder": str(Path(images).resolve()), "n": result.stats.n},
        "reference": provenance,
    }
    if save_images_stats is not None:
        save_stats(save_images_stats, mu, sigma, {"card": card})
    return {
        "fid": assert_finite(frechet_distance(mu, sigma, ref.mu, ref.sigma)),
        "n": result.stats.n,
        "n_ref": provenance.get("n"),
        "skipped": [s.to_json() for s in result.skipped],
        "seconds": result.seconds,
        "card": card,
    }


def write_reference_stats(
    images: str | Path, settings: FidSettings, out: str | Path, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Compute (or reuse) a folder's reference statistics and write them to `out`.

    `out` itself acts as a cache: when it already holds statistics of the same content hash,
    nothing is recomputed.

    Args:
        images: the reference image folder.
        settings: protocol, extractor and pool.
        out: the `.npz` to write (`mu`, `sigma`, and a JSON `meta`).
        cache_dir: an additional content-hash cache folder.

    Returns:
        The provenance record (`content_hash`, `n`, `cached`, `skipped`, ...) plus `out`.
    """
    out = Path(out)
    if out.is_file():
        existing = load_stats(out)
        if existing.meta.get("reference", {}).get("content_hash") == reference_key(
            images, settings
        ):
            return {**existing.meta["reference"], "cached": True, "out": str(out)}
    with start_pool(settings) as pool:
        ref, provenance = reference_stats(images, settings, pool, cache_dir)
    if cache_dir is not None and provenance["cached"]:
        shutil.copyfile(Path(cache_dir) / f"{provenance['content_hash']}.npz", out)
    else:
        save_stats(out, ref.mu, ref.sigma, ref.meta)
    return {**provenance, "out": str(out)}


def assert_finite(value: float) -> float:
    """Return a finite FID or raise FidError (a NaN would otherwise be printed as a score)."""
    if not np.isfinite(value):
        raise FidError(f"FID is not finite: {value}")
    return value
