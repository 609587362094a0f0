"""Frechet Inception Distance from float64 sufficient statistics (pure: numpy + scipy only).

A feature set is summarised by `n`, `sum x` and `sum x x^T` in float64. These add up, so shards
scored by different workers merge exactly (up to float64 rounding) into the single-pass result;
the mean and the unbiased covariance (the `np.cov` convention of pytorch-fid and clean-fid) are
derived only at the end. Reference statistics are `.npz` files with `mu` and `sigma`, the layout
pytorch-fid and clean-fid read and write; extra keys are ignored by both.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

from dreamray.files import atomic_path

# The diagonal offset pytorch-fid and clean-fid add when sqrtm of the product is not finite.
SINGULAR_EPS = 1e-6
# Largest imaginary part on the diagonal of sqrtm that is still treated as rounding noise.
IMAG_ATOL = 1e-3


class FidError(ValueError):
    """An FID input that cannot be scored (too few samples, mismatched dimensions, bad file)."""


class StatsDimensionError(FidError):
    """Two sets of statistics (or features and statistics) of different dimensions."""


class FeatureStats:
    """Float64 sufficient statistics of a set of feature vectors: n, sum x, sum x x^T."""

    def __init__(self, dim: int) -> None:
        """Create empty statistics.

        Args:
            dim: the feature dimension D.
        """
        self.dim = int(dim)
        self.n = 0
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features: Any) -> FeatureStats:
        """Add a batch of features.

        Args:
            features: array-like of shape N x D (any float dtype; accumulated in float64).

        Returns:
            self, for chaining.

        Raises:
            StatsDimensionError: the features are not N x D.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StatsDimensionError(
                f"features of shape {x.shape} do not match statistics of dimension {self.dim}"
            )
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another set's statistics into this one.

        Args:
            other: statistics of the same dimension.

        Returns:
            self, for chaining.

        Raises:
            StatsDimensionError: the dimensions differ.
        """
        if other.dim != self.dim:
            raise StatsDimensionError(
                f"cannot merge statistics of dimension {other.dim} into dimension {self.dim}"
            )
        self.n += other.n
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the unbiased (n - 1) covariance, both float64.

        Returns:
            (mu of shape D, sigma of shape D x D), sigma exactly symmetric.

        Raises:
            FidError: fewer than 2 samples (the covariance is undefined).
        """
        if self.n < 2:
            raise FidError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.sum / self.n
        sigma = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        # x^T x is symmetric in exact arithmetic; symmetrise the float64 rounding away.
        return mu, (sigma + sigma.T) / 2.0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """A plain-array form (picklable, savable): keys `n`, `sum`, `sum_outer`."""
        return {"n": np.asarray(self.n), "sum": self.sum, "sum_outer": self.sum_outer}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> FeatureStats:
        """Rebuild statistics from `to_arrays()` output.

        Raises:
            StatsDimensionError: `sum` and `sum_outer` disagree on the dimension.
        """
        total = np.asarray(arrays["sum"], dtype=np.float64)
        outer = np.asarray(arrays["sum_outer"], dtype=np.float64)
        if total.ndim != 1 or outer.shape != (total.shape[0], total.shape[0]):
            raise StatsDimensionError(f"sum {total.shape} and sum_outer {outer.shape} disagree")
        stats = cls(total.shape[0])
        stats.n, stats.sum, stats.sum_outer = int(arrays["n"]), total.copy(), outer.copy()
        return stats


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = SINGULAR_EPS
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), computed as pytorch-fid
    and clean-fid do: when sqrtm of the product is not finite, `eps` is added to both diagonals
    and sqrtm retried; a complex result whose diagonal imaginary part is below 1e-3 keeps its
    real part.

    Args:
        mu1, sigma1: mean (D) and covariance (D x D) of the first set.
        mu2, sigma2: mean and covariance of the second set.
        eps: the diagonal offset for a singular product.

    Returns:
        The distance as a Python float.

    Raises:
        StatsDimensionError: the shapes do not match.
        FidError: sqrtm has a significant imaginary component.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise StatsDimensionError(
            f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise StatsDimensionError(f"mu {mu1.shape} and sigma {sigma1.shape} disagree")
    diff = mu1 - mu2
    covmean = _sqrtm_product(sigma1, sigma2, eps)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    with warnings.catch_warnings():
        # scipy warns when the product is singular; the finite check below handles that case.
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: singular product of covariances; adding {eps} to their diagonals",
            RuntimeWarning,
            stacklevel=3,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise FidError(f"sqrtm has an imaginary component of {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return covmean


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two sets of sufficient statistics.

    Raises:
        StatsDimensionError: the dimensions differ.
        FidError: either set has fewer than 2 samples.
    """
    if a.dim != b.dim:
        raise StatsDimensionError(f"statistics of dimension {a.dim} vs {b.dim}")
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


@dataclass(frozen=True)
class ReferenceStats:
    """Mean and covariance of a reference set, with what is known about where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        """The feature dimension D."""
        return int(self.mu.shape[0])


def save_stats(path: str | Path, mu: Any, sigma: Any, meta: dict[str, Any] | None = None) -> Path:
    """Write `mu`, `sigma` (and optional JSON metadata under `meta`) to an `.npz`, atomically.

    The file loads in pytorch-fid and clean-fid, which read only `mu` and `sigma`.

    Args:
        path: destination; `.npz` is appended by numpy when missing, so pass it explicitly.
        mu: mean, shape D.
        sigma: covariance, shape D x D.
        meta: JSON-serialisable provenance (n, protocol card, content hash).

    Returns:
        The path written.

    Raises:
        StatsDimensionError: mu and sigma disagree.
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_shapes(mu, sigma, str(path))
    path = Path(path)
    # np.savez appends `.npz` to a name without it: the temp name keeps the suffix
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, meta=np.asarray(json.dumps(meta or {}, sort_keys=True)))
    return path


def load_stats(path: str | Path, expected_dim: int | None = None) -> ReferenceStats:
    """Read reference statistics from a pytorch-fid / clean-fid / dreamray `.npz`.

    Args:
        path: the `.npz` file.
        expected_dim: the feature dimension they must have (the extractor's), if known.

    Returns:
        The statistics; `meta` is empty for files written by other tools.

    Raises:
        FidError: the file is missing, unreadable or lacks `mu` / `sigma`.
        StatsDimensionError: mu / sigma disagree, or differ from `expected_dim`.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise FidError(
                    f"{path}: reference statistics need arrays 'mu' and 'sigma', "
                    f"found {sorted(data.keys())}"
                )
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError) as err:
        if isinstance(err, FidError):
            raise
        raise FidError(f"{path}: cannot read reference statistics: {err}") from err
    _check_shapes(mu, sigma, str(path))
    if expected_dim is not None and mu.shape[0] != expected_dim:
        raise StatsDimensionError(
            f"{path}: reference statistics have dimension {mu.shape[0]} but the feature "
            f"extractor gives {expected_dim}: they were made with another network"
        )
    return ReferenceStats(mu=mu, sigma=sigma, meta=meta)


def _check_shapes(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsDimensionError(
            f"{where}: mu {mu.shape} and sigma {sigma.shape} are not D and D x D"
        )
