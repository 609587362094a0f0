"""Running the frozen towers over a source shard: what a precompute stage's actors do (no Ray).

`TowerRunner` loads the CLIP vision tower and the VAE the way a train stage's model loads them
(`dreamray.model.build`), applies the train stage's own transforms (`ImageTransforms` without a
flip, then the collator's normalisation) and calls the model's own tower functions
(`clip_patch_features`, `vae_latent_moments`), so the features are what the train stage's
forward would have computed from pixels. `make_feature_shard` writes one source shard's feature
shard (`dreamray.data.features`), or keeps it when its key still matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from dreamray.config.precompute_specs import PrecomputeSpec
from dreamray.data.collate import normalize_clip, normalize_sd
from dreamray.data.features import (
    FeatureInfo,
    FeatureKey,
    expected_key_parts,
    feature_path,
    feature_rows,
    read_key,
    shard_digest,
    write_feature_shard,
)
from dreamray.data.transforms import ImageTransforms, decode_rgb, sd_pixels
from dreamray.model.layouts import diffusion_resolution

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def feature_info(spec: PrecomputeSpec) -> FeatureInfo:
    """A precompute's settings and payload shapes, from the towers' configs (no weights).

    Args:
        spec: the precompute spec.

    Returns:
        What its `features.json` holds.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig

    clip = CLIPVisionConfig.from_pretrained(spec.vision_path, local_files_only=True)
    vae = AutoencoderKL.load_config(Path(spec.diffusion_path) / "vae", local_files_only=True)
    side = diffusion_resolution(spec.diffusion_path) // 2 ** (len(vae["block_out_channels"]) - 1)
    return FeatureInfo(
        spec.dtype, spec.vision_select_layer,
        ((clip.image_size // clip.patch_size) ** 2, clip.hidden_size),
        (2 * int(vae["latent_channels"]), side, side),
        {s.name: s.path for s in spec.sources},
    )


@dataclass
class ShardResult:
    """What happened to one source shard."""

    source: str
    shard: str
    status: str  # "made", "remade" (a stale one was replaced) or "kept"
    rows: int = 0
    images: int = 0
    unreadable_rows: int = 0
    seconds: float = 0.0


class TowerRunner:
    """The frozen CLIP vision tower and VAE of a precompute spec, on one device."""

    def __init__(self, spec: PrecomputeSpec, device: torch.device) -> None:
        """Load both towers (eval mode, the spec's dtype) and the transforms.

        Args:
            spec: the precompute spec.
            device: where the towers run.
        """
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionModel

        self.spec, self.device = spec, device
        self.dtype = _TORCH_DTYPES[spec.dtype]
        self.clip = CLIPVisionModel.from_pretrained(spec.vision_path, local_files_only=True)
        self.vae = AutoencoderKL.from_pretrained(Path(spec.diffusion_path) / "vae",
                                                 local_files_only=True)
        for tower in (self.clip, self.vae):
            tower.to(device, self.dtype).eval().requires_grad_(False)
        self.transforms = ImageTransforms(spec.vision_path, spec.diffusion_path, False, 0)
        self.towers_key, self.transform_key = expected_key_parts(
            spec.vision_path, spec.diffusion_path, spec.vision_select_layer, spec.dtype)
        self._info = feature_info(spec)  # read once: every shard's table needs it

    def info(self) -> FeatureInfo:
        """The artifact's settings (`features.json`)."""
        return self._info

    def key(self, shard: str) -> FeatureKey:
        """The key of this shard's features."""
        return FeatureKey(self.towers_key, self.transform_key, shard_digest(shard))

    @torch.inference_mode()
    def features(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """CLIP patch features and VAE posterior parameters of decoded RGB images.

        Args:
            images: PIL RGB images (at least one).

        Returns:
            (``[N, P, C]``, ``[N, 2c, h, w]``) numpy arrays in the spec's dtype.
        """
        from dreamray.model.diffusion import vae_latent_moments
        from dreamray.model.plugins import clip_patch_features

        rescale, mean, std = self.transforms.clip_normalization()
        clip_out, moments_out = [], []
        size = self.transforms.sd_size
        for lo in range(0, len(images), self.spec.batch_size):
            chunk = images[lo: lo + self.spec.batch_size]
            clip_px = torch.from_numpy(self.transforms.clip_pixels(chunk))
            sd_px = torch.from_numpy(np.stack([sd_pixels(im, size, False) for im in chunk]))
            clip_in = normalize_clip(clip_px, rescale, mean, std).to(self.device)
            sd_in = normalize_sd(sd_px).to(self.device)
            layer = self.spec.vision_select_layer
            clip_out.append(clip_patch_features(self.clip, clip_in, layer).cpu())
            moments_out.append(vae_latent_moments(self.vae, sd_in).cpu())
        np_dtype = np.dtype(self.spec.dtype)
        return (torch.cat(clip_out).numpy().astype(np_dtype, copy=False),
                torch.cat(moments_out).numpy().astype(np_dtype, copy=False))


def _decode_row(images: list[bytes]) -> tuple[list, list[int], str]:
    decoded, bad, reasons = [], [], []
    for i, data in enumerate(images):
        try:
            decoded.append(decode_rgb(data))
        except Exception as err:  # noqa: BLE001 - PIL signals bad bytes in many ways
            bad.append(i)
            reasons.append(f"image {i}: {type(err).__name__}: {err}")
    return decoded, bad, "; ".join(reasons)


def _with_gaps(values: np.ndarray, bad: list[int], total: int) -> np.ndarray:
    """The decoded images' values with zeros at the undecodable images' indices."""
    if not bad:
        return values
    out = np.zeros((total, *values.shape[1:]), values.dtype)
    out[[i for i in range(total) if i not in bad]] = values
    return out


def _group_table(runner: TowerRunner, info: FeatureInfo, ids: list[str],
                 rows_images: list[list[bytes]]):
    decoded = [_decode_row(images) for images in rows_images]
    flat = [im for images, _, _ in decoded for im in images]
    dtype = np.dtype(runner.spec.dtype)
    clip = np.zeros((0, *info.clip_shape), dtype)
    moments = np.zeros((0, *info.moments_shape), dtype)
    if flat:
        clip, moments = runner.features(flat)
    clip_rows, moment_rows, at = [], [], 0
    for (images, bad, _), raw in zip(decoded, rows_images, strict=True):
        n = len(images)
        clip_rows.append(_with_gaps(clip[at: at + n], bad, len(raw)))
        moment_rows.append(_with_gaps(moments[at: at + n], bad, len(raw)))
        at += n
    table = feature_rows(ids, clip_rows, moment_rows, [err for _, _, err in decoded],
                         [bad for _, bad, _ in decoded])
    return table, len(flat)


def make_feature_shard(runner: TowerRunner, source: str, source_root: str, shard: str,
                       out_dir: str) -> ShardResult:
    """Write the feature shard of one source shard, unless a current one is there.

    A feature shard with another key (other towers, transforms or shard bytes) is stale: it is
    replaced, never reused.

    Args:
        runner: the loaded towers.
        source: the source name.
        source_root: the source's shard dir.
        shard: the shard file.
        out_dir: the precompute artifact dir.

    Returns:
        What was done, with row, image and timing counts.
    """
    started = time.perf_counter()
    path = feature_path(out_dir, source, source_root, shard)
    key = runner.key(shard)
    found = read_key(path)
    if found == key:
        return ShardResult(source, shard, "kept")
    parquet = pq.ParquetFile(shard)
    info = runner.info()
    groups, rows, images, unreadable = [], 0, 0, 0
    for g in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(g, columns=["id", "images"])
        ids, rows_images = table.column("id").to_pylist(), table.column("images").to_pylist()
        group, n_images = _group_table(runner, info, ids, rows_images)
        groups.append(group)
        rows += len(ids)
        images += n_images
        unreadable += sum(1 for e in group.column("error").to_pylist() if e)
    write_feature_shard(path, key, groups)
    status = "made" if found is None else "remade"
    return ShardResult(source, shard, status, rows, images, unreadable,
                       time.perf_counter() - started)
