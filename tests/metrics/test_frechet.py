import numpy as np
import pytest
import scipy.linalg
import torch

from ipoke.metrics import FeatureStatistics, frechet_distance, frechet_distance_from_statistics


def scipy_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Straightforward float64 Fréchet distance with scipy's sqrtm of Σ_a Σ_b."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_matches_scipy_on_random_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) + 0.3
    expected = scipy_reference(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    single = frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert single == pytest.approx(expected, rel=1e-4)


def test_identical_sets_give_zero():
    features = np.random.default_rng(1).normal(size=(64, 32))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)


def test_rank_deficient_identical_sets_give_zero_without_complex_parts():
    # Fewer samples than dimensions: singular covariances, the usual FVD situation.
    features = np.random.default_rng(2).normal(size=(10, 50))
    value = frechet_distance(features, features)
    assert isinstance(value, float)
    assert value == pytest.approx(0.0, abs=1e-8)


def test_shifted_means_give_the_squared_shift():
    features = np.random.default_rng(3).normal(size=(200, 8))
    shift = np.arange(8) / 4.0
    assert frechet_distance(features, features + shift) == pytest.approx((shift ** 2).sum(), rel=1e-10)


def test_known_covariances():
    # N(0, diag(s²)) vs N(m, diag(t²)): d² = |m|² + Σ (s - t)².
    s, t, m = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5]), np.array([1.0, 0.0, -2.0])
    expected = (m ** 2).sum() + ((s - t) ** 2).sum()
    assert frechet_distance_from_statistics(np.zeros(3), np.diag(s ** 2), m, np.diag(t ** 2)) == pytest.approx(expected)
    # The same through samples: whitened samples scaled exactly to these covariances.
    rng = np.random.default_rng(4)
    z = rng.normal(size=(1000, 3))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    assert frechet_distance(z * s, z * t + m) == pytest.approx(expected, rel=1e-9)


def test_streaming_statistics_equal_one_shot():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(103, 6)) * 3 + 1
    streamed = FeatureStatistics()
    for start in range(0, 103, 16):
        streamed.update(torch.from_numpy(features[start:start + 16]))
    np.testing.assert_allclose(streamed.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(streamed.covariance, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    halves = FeatureStatistics.from_features(features[:50]).merge(FeatureStatistics.from_features(features[50:]))
    assert halves.count == 103
    np.testing.assert_allclose(halves.covariance, streamed.covariance, rtol=1e-12)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))


def test_features_far_from_zero_give_the_same_distance():
    # The one-pass covariance around 0 lost every digit here: offset 1e8 gave 0.0 or 23.9 instead of about 0.4.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), 1.2 * rng.normal(size=(500, 8))
    expected = scipy_reference(a, b)
    for offset in (1e6, 1e8):
        assert frechet_distance(a + offset, b + offset) == pytest.approx(expected, rel=1e-6)
    # Streaming and merging accumulators with different shifts (first batches far apart) stays exact too.
    first, second = FeatureStatistics.from_features(a[:100] + 1e8), FeatureStatistics.from_features(a[100:] - 5)
    merged = first.merge(second)
    whole = np.concatenate([a[:100] + 1e8, a[100:] - 5])
    np.testing.assert_allclose(merged.mean, whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(whole, rowvar=False), rtol=1e-6)
    # An empty first batch must not fix the shift at 0 (that distance was 0.0 instead of the reference's).
    streamed = FeatureStatistics()
    streamed.update(np.zeros((0, 8)))
    streamed.update(a + 1e8)
    assert streamed.count == 500
    assert streamed.frechet_distance(FeatureStatistics.from_features(b + 1e8)) == pytest.approx(expected, rel=1e-6)


def test_non_finite_features_and_mismatched_merges_are_refused():
    features = np.random.default_rng(1).normal(size=(20, 5))
    broken = features.copy()
    broken[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 of 20 feature vectors hold NaN or inf"):
        frechet_distance(broken, features)
    with pytest.raises(ValueError, match="feature size changed from 5 to 4"):
        FeatureStatistics.from_features(features).merge(FeatureStatistics.from_features(features[:, :4]))
    # A numpy view with negative strides (a reversed array) works like its copy.
    assert frechet_distance(features[::-1], features) == pytest.approx(0.0, abs=1e-9)
