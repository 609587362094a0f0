"""A train stage's view of a precompute artifact (`dreamray.data.features`): every feature
shard its sources need, checked on the driver before any worker starts, then row lookups in the
map actors (numpy + pyarrow only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dreamray.data.features import (
    FeatureInfo,
    FeatureKey,
    StaleFeaturesError,
    expected_key_parts,
    feature_path,
    open_feature_shard,
    open_shard,
    shard_digest,
)


def _payload(raw: bytes, n: int, shape: tuple, dtype: str, wanted: list[int]) -> np.ndarray:
    values = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(n, *shape)
    return np.ascontiguousarray(values[wanted]) if wanted else values[:0]


class StageFeatures:
    """A train stage's view of a precompute artifact: every shard of its sources checked once
    (on the driver, before any worker starts), then row lookups in the map actors."""

    def __init__(self, features_dir: str, model: Any, sources: list[Any]) -> None:
        """Check that the artifact covers the stage's sources with its towers.

        Args:
            features_dir: the precompute stage's artifact dir.
            model: the train stage's `ModelSpec` (its towers and CLIP layer).
            sources: the stage's `SourceIndex`es with their `DataSourceSpec`s, as
                ``[(index, spec), ...]``.

        Raises:
            FileNotFoundError: not a precompute artifact.
            StaleFeaturesError: a source the artifact does not cover, or a shard whose feature
                shard is missing or stale (the message names both files).
        """
        self.dir = str(features_dir)
        self.info = FeatureInfo.load(features_dir)
        if self.info.select_layer != model.vision_select_layer:
            raise StaleFeaturesError(
                f"{features_dir}: features of CLIP layer {self.info.select_layer}, but "
                f"model.vision_select_layer is {model.vision_select_layer}")
        towers, transform = expected_key_parts(model.vision_path, model.diffusion_path,
                                               model.vision_select_layer, self.info.dtype)
        self.paths: dict[tuple[str, str], str] = {}
        for index, spec in sources:
            if self.info.sources.get(spec.name) != spec.path:
                raise StaleFeaturesError(f"{features_dir}: source {spec.name} ({spec.path}) "
                                         "was not precomputed there")
            for f, rows in zip(index.files, index.file_rows(), strict=True):
                path = str(feature_path(self.dir, spec.name, spec.path, f))
                open_feature_shard(path, FeatureKey(towers, transform, shard_digest(f)), f, rows)
                self.paths[(spec.name, f)] = path

    def row(self, source: str, shard: str, file_row: int, row_id: str) -> dict:
        """The feature row of one source row.

        Raises:
            StaleFeaturesError: the feature row belongs to another row id.
        """
        path = self.paths[(source, shard)]
        found = open_shard(path).row(file_row)
        if found["id"] != row_id:
            raise StaleFeaturesError(f"{path} row {file_row}: features of {found['id']!r}, "
                                     f"but {shard} has {row_id!r} there")
        return found

    def select(self, found: dict, clip: list[int], sd: list[int]) -> tuple[np.ndarray, ...]:
        """The payloads of the images a sample uses, in sequence order.

        Args:
            found: a feature row (`row`).
            clip: indices of the sample's CLIP inputs.
            sd: indices of its SD targets.

        Returns:
            (clip features ``[len(clip), P, C]``, moments ``[len(sd), 2c, h, w]``).

        Raises:
            ValueError: the sample uses an image that could not be decoded.
        """
        bad = set(found["bad_images"] or ()) & (set(clip) | set(sd))
        if bad:
            raise ValueError(f"images {sorted(bad)} could not be decoded: {found['error']}")
        n, info = int(found["n_images"]), self.info
        return (_payload(found["clip"], n, info.clip_shape, info.dtype, clip),
                _payload(found["moments"], n, info.moments_shape, info.dtype, sd))
