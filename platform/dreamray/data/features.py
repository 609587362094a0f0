"""Feature shards: the frozen towers' outputs for a source shard, written by a precompute stage
and read by a train stage instead of pixels (numpy + pyarrow only; no torch, no Ray).

One feature shard per source shard, ``<features dir>/<source name>/<shard path>.features.parquet``
(the shard's path relative to its source dir, ``/`` spelled ``__``). Its rows are the source
shard's rows, in order (row r of the file describes row r of the shard), with the columns of
FEATURE_SCHEMA; every image of a row is there, whether a stage keeps it or not, so one
precompute serves every train stage that reads the source:

    id          str    the source row's id (checked against the row it stands for)
    clip        bytes  [n_images, P, C]: `CLIPVisionEmbedding.tower_features` of the CLIP
                       processor's input (resize, crop, rescale, normalise)
    moments     bytes  [n_images, 2c, h, w]: `StableDiffusionHead.latent_moments` (the VAE
                       posterior's mean and log-variance) of the SD transform without a flip
    n_images    int    images of the row
    error       str    "" or why some of the row's images could not be decoded
    bad_images  [int]  their indices (their values are zeros): a train stage skips a sample
                       that uses one, as it skips undecodable pixels

The file's key (schema metadata ``dreamray.features``) names what the features depend on:
the towers' weights and configs (`tower_digest`), the transforms and storage dtype
(`transform_digest`) and the source shard itself (`shard_digest`). A reader refuses a shard
whose key differs from the one it expects (`open_feature_shard`), and a precompute stage
re-makes it: a stale cache is never read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dreamray.files import atomic_path, sha256_file

FEATURES_SUFFIX = ".features.parquet"
KEY_METADATA = b"dreamray.features"
FEATURE_DTYPES = ("float32", "float16")
FEATURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("clip", pa.binary()),
        ("moments", pa.binary()),
        ("n_images", pa.int32()),
        ("error", pa.string()),
        ("bad_images", pa.list_(pa.int32())),
    ]
)
INFO_FILE = "features.json"  # the precompute artifact's settings (`FeatureInfo`)
_FOOTER_TAIL = 8  # a parquet file ends with the footer's length (4 bytes) and "PAR1"
_TOWER_FILES = ("*.json", "*.safetensors", "*.bin")
_SHARD_CACHE = 8  # open feature shards kept per process


class StaleFeaturesError(ValueError):
    """A feature shard that is missing, or was made for other towers, transforms or shard."""


@dataclass(frozen=True)
class FeatureKey:
    """What a feature shard's values depend on (each part a hex digest)."""

    towers: str
    transform: str
    shard: str

    def differences(self, other: FeatureKey) -> list[str]:
        """Names of the parts that differ from `other` (empty when the keys are equal)."""
        return [k for k, v in asdict(self).items() if asdict(other)[k] != v]


@dataclass(frozen=True)
class FeatureInfo:
    """A precompute artifact's settings (its ``features.json``): what a reader needs to
    expect the right key and to lay the payloads out."""

    dtype: str  # one of FEATURE_DTYPES
    select_layer: int
    clip_shape: tuple[int, int]  # (P, C) of one image
    moments_shape: tuple[int, int, int]  # (2c, h, w) of one image
    sources: dict[str, str]  # source name -> shard dir

    def save(self, artifact_dir: str | os.PathLike) -> None:
        """Write ``features.json`` into the artifact dir."""
        from dreamray.files import atomic_write_json

        atomic_write_json(Path(artifact_dir) / INFO_FILE, asdict(self))

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike) -> FeatureInfo:
        """Read a precompute artifact's ``features.json``.

        Raises:
            FileNotFoundError: not a precompute artifact (no features.json).
        """
        path = Path(artifact_dir) / INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a precompute stage's artifact (no {INFO_FILE})")
        raw = json.loads(path.read_text())
        return cls(raw["dtype"], int(raw["select_layer"]), tuple(raw["clip_shape"]),
                   tuple(raw["moments_shape"]), dict(raw["sources"]))


def _digest_files(digest, root: Path, patterns: tuple[str, ...]) -> None:
    paths = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    if not paths:
        raise FileNotFoundError(f"no tower files ({', '.join(patterns)}) in {root}")
    for path in paths:
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())


@functools.lru_cache(maxsize=8)
def tower_digest(vision_path: str, diffusion_path: str) -> str:
    """Digest of the frozen towers' files: the CLIP vision dir and the SD dir's ``vae/``.

    Args:
        vision_path: HF CLIP vision dir (weights, config, image processor config).
        diffusion_path: diffusers SD dir.

    Returns:
        Hex sha256 over the files' names and contents (read once per process and path).

    Raises:
        FileNotFoundError: a dir without tower files.
    """
    digest = hashlib.sha256()
    _digest_files(digest, Path(vision_path), _TOWER_FILES)
    _digest_files(digest, Path(diffusion_path) / "vae", _TOWER_FILES)
    return digest.hexdigest()


def transform_digest(
    clip_processor: dict, sd_resolution: int, select_layer: int, dtype: str
) -> str:
    """Digest of how pixels become features: the CLIP processor's settings, the SD resolution
    (no flip), the CLIP layer read and the storage dtype.

    Args:
        clip_processor: the processor's config (`CLIPImageProcessor.to_dict()`).
        sd_resolution: R of the SD transform.
        select_layer: `ModelSpec.vision_select_layer`.
        dtype: one of FEATURE_DTYPES.

    Returns:
        Hex sha256.
    """
    payload = {"clip": clip_processor, "sd": sd_resolution, "layer": select_layer, "dtype": dtype}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def expected_key_parts(vision_path: str, diffusion_path: str, select_layer: int,
                       dtype: str) -> tuple[str, str]:
    """The (towers, transform) parts of the key that features of these towers carry.

    Args:
        vision_path: HF CLIP vision dir.
        diffusion_path: diffusers SD dir.
        select_layer: the CLIP layer read.
        dtype: the storage dtype.

    Returns:
        `(tower_digest, transform_digest)`.
    """
    from transformers import CLIPImageProcessor  # heavy: only where keys are computed

    from dreamray.model.layouts import diffusion_resolution

    processor = CLIPImageProcessor.from_pretrained(str(vision_path), local_files_only=True)
    transform = transform_digest(processor.to_dict(), diffusion_resolution(diffusion_path),
                                 select_layer, dtype)
    return tower_digest(str(vision_path), str(diffusion_path)), transform


def shard_digest(path: str | os.PathLike) -> str:
    """Digest of a source shard from its size and parquet footer (row groups, column chunk
    offsets, sizes and statistics): a rewritten shard changes it, and it costs one small read,
    so a train stage can check thousands of shards before it starts.

    Args:
        path: a parquet file.

    Returns:
        Hex sha256.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(size - _FOOTER_TAIL)
        tail = f.read(_FOOTER_TAIL)
        footer_len = int.from_bytes(tail[:4], "little")
        f.seek(max(0, size - _FOOTER_TAIL - footer_len))
        footer = f.read(footer_len)
    return hashlib.sha256(size.to_bytes(8, "little") + footer + tail).hexdigest()


def feature_path(features_dir: str | os.PathLike, source: str, source_root: str | os.PathLike,
                 shard: str | os.PathLike) -> Path:
    """Where the feature shard of one source shard lives.

    Args:
        features_dir: the precompute stage's artifact dir.
        source: the source name.
        source_root: the source's shard dir.
        shard: the shard file (under `source_root`).

    Returns:
        The feature shard's path.
    """
    relative = Path(shard).resolve().relative_to(Path(source_root).resolve())
    return Path(features_dir) / source / (str(relative).replace(os.sep, "__") + FEATURES_SUFFIX)


def read_key(path: str | os.PathLike) -> FeatureKey | None:
    """The key a feature shard was written with; None when the file is missing or keyless."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(KEY_METADATA)
    return None if raw is None else FeatureKey(**json.loads(raw))


def write_feature_shard(path: str | os.PathLike, key: FeatureKey, groups: list[pa.Table]) -> None:
    """Write a feature shard atomically, one parquet row group per table.

    Args:
        path: the feature shard's path (`feature_path`).
        key: its key.
        groups: tables in FEATURE_SCHEMA, in the source shard's row order.
    """
    schema = FEATURE_SCHEMA.with_metadata({KEY_METADATA: json.dumps(asdict(key)).encode()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in groups:
                writer.write_table(table.cast(schema))


def feature_rows(ids: list[str], clip: list[np.ndarray], moments: list[np.ndarray],
                 errors: list[str], bad_images: list[list[int]]) -> pa.Table:
    """One row group's table from per-row arrays.

    Args:
        ids: row ids.
        clip: per row, ``[n_images, P, C]``.
        moments: per row, ``[n_images, 2c, h, w]``.
        errors: per row, "" or why some of its images could not be decoded.
        bad_images: per row, the indices of those images.

    Returns:
        A table in FEATURE_SCHEMA.
    """
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "clip": pa.array([np.ascontiguousarray(c).tobytes() for c in clip], pa.binary()),
            "moments": pa.array([np.ascontiguousarray(m).tobytes() for m in moments],
                                pa.binary()),
            "n_images": pa.array([int(c.shape[0]) for c in clip], pa.int32()),
            "error": pa.array(errors, pa.string()),
            "bad_images": pa.array(bad_images, pa.list_(pa.int32())),
        },
        schema=FEATURE_SCHEMA,
    )


class FeatureShard:
    """Read access to one checked feature shard, row by row (row groups cached)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = pq.ParquetFile(path)
        meta = self._file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._group = functools.lru_cache(maxsize=2)(self._file.read_row_group)

    @property
    def num_rows(self) -> int:
        """Rows in the shard."""
        return int(self._starts[-1])

    def row(self, file_row: int) -> dict:
        """The features of row `file_row` of the source shard.

        Args:
            file_row: the row's index in its shard file.

        Returns:
            A dict with FEATURE_SCHEMA's fields (payloads as bytes).
        """
        g = int(np.searchsorted(self._starts, file_row, side="right") - 1)
        table = self._group(g)
        return table.slice(file_row - int(self._starts[g]), 1).to_pylist()[0]


@functools.lru_cache(maxsize=_SHARD_CACHE)
def _open(path: str, mtime_ns: int) -> FeatureShard:
    # keyed by mtime too: a shard re-made in place is a new file
    return FeatureShard(path)


def open_shard(path: str | os.PathLike) -> FeatureShard:
    """A feature shard for reading (cached per process; not checked: `open_feature_shard`)."""
    return _open(str(path), os.stat(path).st_mtime_ns)


def open_feature_shard(path: str | os.PathLike, expected: FeatureKey, shard: str,
                       num_rows: int) -> FeatureShard:
    """Open a feature shard after checking that it was made for this shard and these towers.

    Args:
        path: the feature shard (`feature_path`).
        expected: the key the reader computed for its towers, transforms and `shard`.
        shard: the source shard it stands for (named in errors).
        num_rows: the source shard's rows.

    Returns:
        The shard (cached per process).

    Raises:
        StaleFeaturesError: missing, keyless, another key, or another row count: the message
            names the file and what differs; re-run the precompute stage to re-make it.
    """
    found = read_key(path)
    if found is None:
        raise StaleFeaturesError(
            f"{path}: no feature shard for {shard} (run the precompute stage over this source)"
        )
    if found != expected:
        raise StaleFeaturesError(
            f"{path}: stale features for {shard}: {', '.join(found.differences(expected))} "
            "changed since it was made (re-run the precompute stage; it re-makes stale shards)"
        )
    opened = open_shard(path)
    if opened.num_rows != num_rows:
        raise StaleFeaturesError(
            f"{path}: {opened.num_rows} rows, but {shard} has {num_rows}"
        )
    return opened

