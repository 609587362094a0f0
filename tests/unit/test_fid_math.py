"""FID math: sufficient statistics, the Frechet distance and reference-statistics files."""

from __future__ import annotations

import numpy as np
import pytest

from dreamray.metrics.fid import (
    FeatureStats,
    FidError,
    StatsDimensionError,
    fid_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
)


def _random_gaussian(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)


def _direct_fid(mu1, s1, mu2, s2) -> float:
    # Independent route: Tr sqrt(s1 s2) = sum sqrt(eig(sqrt(s1) s2 sqrt(s1))), all symmetric.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


@pytest.mark.parametrize("dim", [1, 5, 64])
def test_frechet_distance_matches_direct_computation(dim):
    rng = np.random.default_rng(dim)
    mu1, s1 = _random_gaussian(rng, dim)
    mu2, s2 = _random_gaussian(rng, dim)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _direct_fid(mu1, s1, mu2, s2), rel=1e-9
    )


def test_frechet_distance_one_dimensional_closed_form():
    # For N(m1, a^2) and N(m2, b^2): (m1 - m2)^2 + (a - b)^2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_matches_clean_fid():
    from cleanfid.fid import frechet_distance as clean_frechet

    rng = np.random.default_rng(7)
    mu1, s1 = _random_gaussian(rng, 32)
    mu2, s2 = _random_gaussian(rng, 32)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(clean_frechet(mu1, s1, mu2, s2)), rel=1e-12)


def test_identical_sets_score_about_zero():
    feats = np.random.default_rng(0).normal(size=(500, 16))
    a, b = FeatureStats(16).update(feats), FeatureStats(16).update(feats.copy())
    assert abs(fid_from_stats(a, b)) < 1e-8


def test_singular_covariances_stay_finite():
    # More dimensions than samples: rank-deficient covariances, as with few generated images.
    rng = np.random.default_rng(1)
    a = FeatureStats(40).update(rng.normal(size=(10, 40)))
    b = FeatureStats(40).update(rng.normal(size=(12, 40)) + 0.5)
    value = fid_from_stats(a, b)
    assert np.isfinite(value) and value > 0


def test_large_imaginary_component_is_an_error():
    # sqrtm(diag(1, -1)) = diag(1, i): not a covariance product, so it must not be scored.
    with pytest.raises(FidError, match="imaginary"):
        frechet_distance([0.0, 0.0], np.diag([1.0, -1.0]), [0.0, 0.0], np.eye(2))


def test_feature_stats_mean_cov_match_numpy():
    feats = np.random.default_rng(2).normal(size=(300, 8)) * 3 + 1
    mu, sigma = FeatureStats(8).update(feats.astype(np.float32)).mean_cov()
    f64 = feats.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, f64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f64, rowvar=False), rtol=1e-10, atol=1e-12)
    assert np.array_equal(sigma, sigma.T)


def test_merged_shards_equal_single_pass():
    feats = np.random.default_rng(3).normal(size=(1000, 12)) + 0.3
    single = FeatureStats(12).update(feats)
    merged = FeatureStats(12)
    for shard in np.array_split(feats, 7):
        part = FeatureStats.from_arrays(FeatureStats(12).update(shard).to_arrays())
        merged.merge(part)
    assert merged.n == single.n == 1000
    for x, y in zip(merged.mean_cov(), single.mean_cov(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_feature_stats_errors():
    with pytest.raises(FidError, match="at least 2"):
        FeatureStats(4).update(np.ones((1, 4))).mean_cov()
    with pytest.raises(StatsDimensionError):
        FeatureStats(4).update(np.ones((3, 5)))
    with pytest.raises(StatsDimensionError):
        FeatureStats(4).merge(FeatureStats(5))
    with pytest.raises(StatsDimensionError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_file_round_trip_and_clean_fid_layout(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = _random_gaussian(rng, 6)
    path = save_stats(tmp_path / "ref.npz", mu, sigma, meta={"n": 10})
    loaded = load_stats(path, expected_dim=6)
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    assert loaded.meta == {"n": 10} and loaded.dim == 6
    # pytorch-fid / clean-fid read only mu and sigma from our file ...
    with np.load(path) as data:
        np.testing.assert_array_equal(data["mu"], mu)
    # ... and we read theirs (float32 included, no meta).
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu.astype(np.float32), sigma=sigma)
    assert load_stats(tmp_path / "theirs.npz").meta == {}


def test_stats_file_errors(tmp_path):
    save_stats(tmp_path / "ref.npz", np.zeros(6), np.eye(6))
    with pytest.raises(
        StatsDimensionError, match="dimension 6 but the feature extractor gives 2048"
    ):
        load_stats(tmp_path / "ref.npz", expected_dim=2048)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(FidError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(FidError, match="cannot read"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(StatsDimensionError):
        load_stats(tmp_path / "shape.npz")
